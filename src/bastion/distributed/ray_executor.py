"""Benchmark shards on a Ray cluster: one actor per worker, each loading the model once.

Ray is an optional extra (``pip install "bastion[ray]"``). It is imported inside the functions
that use it (:func:`import_ray`), never at module level, so this module imports without it and
``--executor ray`` can say how to install it.

Why actors, not Ray Data's ``map_batches`` with a callable class: a shard is minutes of work
whose result the driver checkpoints, not a stream of records. With an actor per worker the
driver hands a shard to a worker the moment it is free, gets each shard back the moment it is
done (``ray.wait``) to checkpoint it, knows which worker (host, pid, device) ran it, and lets
Ray restart a lost worker and rerun its shard (``max_restarts``, ``max_task_retries``). Ray
Data would cut its own blocks, hide both the worker and the moment a shard is done, and pull
in pyarrow.

Resources: on CPU each actor asks for ``cpus_per_worker`` CPUs and runs that many torch threads,
so workers never oversubscribe the cores; on CUDA each asks for one GPU (one shard per GPU at a
time).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

from bastion.errors import BastionError, ClusterError, ModelError, UsageError
from bastion.evaluation.executors import ShardEventHook, ShardStarted, run_shard
from bastion.evaluation.inputs import BenchInputs
from bastion.evaluation.runner import UnitFinished
from bastion.evaluation.shards import Shard, ShardResult, WorkerInfo
from bastion.evaluation.state import model_digest
from bastion.evaluation.suite import Suite
from bastion.distributed.source import ModelSource

#: Fault injection, for the tests and for checking a cluster's retry setup: when this names a
#: file that does not exist yet, the first worker to finish an attack creates it and kills
#: itself (SIGKILL), so its shard is lost mid-way and must be retried. Once per file.
FAULT_ENV = "BASTION_FAULT_KILL_WORKER"
#: Restarts of a lost worker, and reruns of the shard it was running.
RETRIES = 3
#: How long the driver waits for its first worker (a cluster with no room never starts one).
STARTUP_TIMEOUT = 600.0
INSTALL_HINT = 'pip install "bastion[ray]"'


def import_ray():
    """The ``ray`` module, or a one-line :class:`UsageError` saying how to install it."""
    try:
        import ray  # the optional extra: imported only where a Ray run needs it
    except ImportError:
        raise UsageError(f"--executor ray needs Ray, an optional extra: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class ShardJob:
    """What every shard of a run shares; sent to the cluster once."""

    suite: Suite
    seed: int
    batch_size: int | None
    bounds: tuple[float, float]
    num_classes: int
    total: int
    model_sha256: str  # the driver's model: a worker that loads another refuses to run
    data_sha256: str


class ShardWorker:
    """The body of each Ray actor: loads (and verifies) the model once, then runs shard after shard."""

    def __init__(self, source: ModelSource, device: str, threads: int) -> None:
        torch.set_num_threads(threads)
        self.source, self.device = source, torch.device(device)
        self.module: torch.nn.Module | None = None
        self.digest = ""

    def start(self, model_sha256: str) -> WorkerInfo:
        """Load the model (verifying it where the source says so) and check it is the driver's."""
        if self.module is None:
            loaded = self.source.load(str(self.device))
            self.digest = model_digest(loaded.module)
            self.module = loaded.module
        if self.digest != model_sha256:
            raise ModelError(f"worker {socket.gethostname()} pid {os.getpid()} loaded {self.source.ref} with "
                             f"sha256 {self.digest[:16]}..., not the driver's {model_sha256[:16]}...: the model "
                             "files differ between hosts")
        return WorkerInfo.here(_device_label(self.device))

    def run(self, job: ShardJob, shard: Shard, x: torch.Tensor, y: torch.Tensor) -> ShardResult:
        worker = self.start(job.model_sha256)  # a restarted actor loads the model again here
        inputs = BenchInputs(self.module, x.to(self.device), y.to(self.device), job.bounds, job.num_classes,
                             index=shard.positions(), total=job.total, model_sha256=self.digest,
                             data_sha256=job.data_sha256)
        began = time.perf_counter()
        state = run_shard(inputs, job.suite, shard, seed=job.seed, batch_size=job.batch_size,
                          on_event=_fault_hook())
        return ShardResult(shard, state, worker, time.perf_counter() - began)


def _fault_hook():
    marker = os.environ.get(FAULT_ENV)
    if not marker:
        return None

    def kill_once(event) -> None:
        if isinstance(event, UnitFinished):
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)
    return kill_once


def _device_label(device: torch.device) -> str:
    if device.type != "cuda":
        return str(device)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "?")
    return f"cuda ({torch.cuda.get_device_name(device)}, GPU {visible})"


class RayExecutor:
    """Runs shards on a Ray cluster (see the module docstring); an executor for ``run_sharded``.

    ``address``: what ``ray.init`` takes (None: the cluster in ``RAY_ADDRESS`` or the latest one
    started on this machine, else a new local one; ``"auto"``; ``"HOST:PORT"``;
    ``"ray://HOST:PORT"``). In a process where Ray is already initialised, that cluster is used.
    ``workers``: actors to start (default: as many as the cluster has room for, at most one per
    shard). ``device``: ``auto`` (GPUs where the cluster has them), ``cpu`` or ``cuda``.
    ``env``: extra environment variables for the workers. ``wait_for_workers``: hand out shards
    only once every worker is up (for benchmarks: the shard phase then has all workers from its
    start); by default a worker starts on a shard as soon as it is up.
    """

    name = "ray"

    def __init__(self, source: ModelSource, *, address: str | None = None, workers: int | None = None,
                 cpus_per_worker: int = 1, device: str = "auto", env: Mapping[str, str] | None = None,
                 retries: int = RETRIES, startup_timeout: float = STARTUP_TIMEOUT,
                 wait_for_workers: bool = False) -> None:
        if workers is not None and workers <= 0:
            raise UsageError(f"--workers must be positive, got {workers}")
        if cpus_per_worker <= 0:
            raise UsageError(f"cpus_per_worker must be positive, got {cpus_per_worker}")
        if device != "auto" and device != "cpu" and not device.startswith("cuda"):
            raise UsageError(f"--device {device!r}: a Ray worker runs on cpu, cuda or auto")
        self.source, self.address, self.workers = source, address, workers
        self.cpus_per_worker, self.device, self.env = cpus_per_worker, device, dict(env or {})
        self.retries, self.startup_timeout, self.wait_for_workers = retries, startup_timeout, wait_for_workers
        self.started: list[WorkerInfo] = []
        self.cluster = address or "local"
        self.worker_device = "cpu"

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "address": self.cluster, "device": self.worker_device,
                "cpus_per_worker": self.cpus_per_worker, "model_verified_by_workers": self.source.verified,
                "workers": [asdict(w) for w in self.started]}

    def run(self, inputs: BenchInputs, suite: Suite, shards: Sequence[Shard], *, seed: int,
            batch_size: int | None, on_event: ShardEventHook) -> Iterator[ShardResult]:
        ray = import_ray()
        self.started = []
        started_here = self._connect(ray)
        self.cluster = _cluster_address(ray, self.address)
        actors = []
        try:
            gpu = self.use_gpu(ray)
            self.worker_device = "cuda" if gpu else "cpu"
            free = ray.available_resources()
            room = int(free.get("GPU", 0)) if gpu else int(free.get("CPU", 0) // self.cpus_per_worker)
            # Workers beyond the room wait for resources; only workers that are up get shards, so
            # asking for too many costs nothing but their wait.
            count = min(len(shards), self.workers or max(room, 1))
            worker = ray.remote(ShardWorker).options(**self.actor_options(gpu))
            actors = [worker.remote(self.source, self.worker_device, self.cpus_per_worker) for _ in range(count)]
            job = ray.put(ShardJob(suite, seed, batch_size, inputs.bounds, inputs.num_classes, inputs.total,
                                   inputs.model_sha256, inputs.data_sha256))
            yield from self._dispatch(ray, actors, job, inputs, shards, on_event)
        finally:
            for actor in actors:
                ray.kill(actor)
            if started_here:
                ray.shutdown()

    def actor_options(self, gpu: bool) -> dict[str, Any]:
        """What each worker asks Ray for: its CPUs (and one GPU), and the restarts and reruns when lost."""
        options: dict[str, Any] = {"num_cpus": self.cpus_per_worker, "num_gpus": 1 if gpu else 0,
                                   "max_restarts": self.retries, "max_task_retries": self.retries}
        # Ray sets OMP_NUM_THREADS to an actor's num_cpus and ShardWorker sets torch's threads; a
        # runtime_env only when asked for, since it makes Ray start a fresh process per actor.
        if self.env:
            options["runtime_env"] = {"env_vars": self.env}
        return options

    def _dispatch(self, ray, actors, job, inputs: BenchInputs, shards: Sequence[Shard],
                  on_event: ShardEventHook) -> Iterator[ShardResult]:
        """Each worker gets a shard once it is up (with ``wait_for_workers``: once all are) and
        another each time it hands one back."""
        x, y = inputs.x.cpu(), inputs.y.cpu()
        starting = {actor.start.remote(inputs.model_sha256): actor for actor in actors}
        running: dict[Any, tuple[Any, Shard]] = {}
        info: dict[Any, WorkerInfo] = {}
        idle: list[Any] = []
        queue = deque(shards)
        deadline = time.monotonic() + self.startup_timeout
        while queue or running:
            waiting_for_start = not info or (self.wait_for_workers and starting)
            timeout = max(0.0, deadline - time.monotonic()) if waiting_for_start else None
            done, _ = ray.wait([*starting, *running], num_returns=1, timeout=timeout)
            if not done:
                asks = f"{self.cpus_per_worker} CPU(s)" + (" and 1 GPU" if self.worker_device == "cuda" else "")
                raise ClusterError(f"{len(starting)} Ray worker(s) did not start within {self.startup_timeout:.0f} "
                                   f"s: the cluster has no room for them (each asks for {asks})")
            ref = done[0]
            result = None
            if ref in starting:
                actor = starting.pop(ref)
                info[actor] = self._get(ray, ref, "starting a Ray worker")
                self.started.append(info[actor])
            else:
                actor, shard = running.pop(ref)
                result = self._get(ray, ref, shard.describe())
            idle.append(actor)
            # Before the driver checkpoints the result, so that the worker is not idle meanwhile.
            while idle and queue and not (self.wait_for_workers and starting):
                actor, shard = idle.pop(), queue.popleft()
                samples = slice(shard.start, shard.stop)
                running[actor.run.remote(job, shard, x[samples], y[samples])] = (actor, shard)
                on_event(ShardStarted(shard, info[actor]))
            if result is not None:
                yield result

    def check_address(self) -> None:
        """Fail at once, in one line, when nothing listens at the cluster's address (``--address``, else
        ``RAY_ADDRESS``); ``ray.init`` would retry for minutes. Auto-detected clusters are not probed."""
        given = self.address or os.environ.get("RAY_ADDRESS")
        if not given or given in ("auto", "local"):
            return
        host, colon, port = given.removeprefix("ray://").rpartition(":")
        name = "--address" if self.address else "RAY_ADDRESS"
        if not colon or not host or not port.isdigit():
            raise UsageError(f"{name} {given!r}: use auto, HOST:PORT or ray://HOST:PORT")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
        except OSError as exc:
            raise ClusterError(f"{name} {given}: no Ray cluster answers there ({exc.strerror or exc}); start one "
                               "with `ray start --head`, or check the address") from None

    def _connect(self, ray) -> bool:
        """Join (or start) the cluster; True when this call started Ray in this process."""
        self.check_address()
        if ray.is_initialized():
            return False
        # Workers' output and Ray's own notices stay out of the command's stderr: a worker's
        # error comes back as the shard's exception.
        options: dict[str, Any] = {"address": self.address, "log_to_driver": False, "logging_level": logging.ERROR}
        if self.address in (None, "local"):
            options["include_dashboard"] = False
        try:
            ray.init(**options)
        except Exception as exc:  # ray.init raises a bare Exception too (a local node that did not start in time)
            raise ClusterError(f"--address {self.address or '(default)'}: cannot reach a Ray cluster "
                               f"({_first_line(exc)})") from None
        return True

    def use_gpu(self, ray) -> bool:
        """Whether the workers run on GPUs: ``cuda`` needs them, ``auto`` takes them where the cluster has them."""
        gpus = ray.cluster_resources().get("GPU", 0)
        if self.device.startswith("cuda") and not gpus:
            raise ClusterError(f"--device {self.device}: the Ray cluster has no GPU; use --device cpu or auto")
        return self.device != "cpu" and gpus > 0

    def _get(self, ray, ref, what: str):
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BastionError):
                raise cause from None
            raise ClusterError(f"{what}: the worker failed: {_first_line(cause or exc)}") from None
        except ray.exceptions.RayActorError as exc:
            raise ClusterError(f"{what}: its Ray worker was lost {self.retries + 1} times, or could not start "
                               f"(is bastion installed on every node?): {_first_line(exc)}; finished shards are "
                               "checkpointed, rerun with --resume") from None


@contextmanager
def local_cluster(num_cpus: int) -> Iterator[str]:
    """A private Ray cluster on this machine for this process (tests, benchmarks); yields its address.

    Its files go to a short temporary directory (Ray's socket paths live there and must stay
    under the OS limit), removed at the end with the cluster.
    """
    ray = import_ray()
    folder = tempfile.mkdtemp(prefix="bastion-ray-")
    try:
        for attempt in (1, 2):
            try:
                ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=folder, log_to_driver=False,
                         logging_level=logging.ERROR)
                break
            except Exception as exc:  # Ray waits a fixed 30 s for its raylet, which a loaded machine can miss
                ray.shutdown()
                if attempt == 2 or "timed out during startup" not in str(exc):
                    raise ClusterError(f"cannot start a local Ray cluster: {_first_line(exc)}") from None
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


def _cluster_address(ray, asked: str | None) -> str:
    if asked and asked.startswith("ray://"):
        return asked  # a Ray Client connection has no GCS client of its own to ask
    return ray.get_runtime_context().gcs_address or asked or "local"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"
