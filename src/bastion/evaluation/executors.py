"""Sharded benchmarks: where shards run (executors) and the one driver that merges them.

:func:`run_sharded` is the driver, whatever the executor: it reads back the finished shards of
an interrupted run (``resume``), hands the others to the executor, checkpoints each shard as it
comes back, merges them all with :meth:`~bastion.evaluation.state.RunState.merge` (the one
aggregation: worst case per sample, each attack's contribution, per class) and computes the
attack-failure indicators once, on the merged run. The result is the state one machine running
the same layout would have built, plus a record of the layout and of where each shard ran.

Executors: :class:`LocalExecutor` runs the shards one after another in this process; the Ray
executor (:class:`bastion.distributed.RayExecutor`) runs them in parallel on a cluster. Both
call :func:`run_shard` on each shard's samples, with the shard's seed, so the same layout gives
the same per-sample outcomes on either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any, Protocol

from bastion.attacks.base import model_device
from bastion.errors import UsageError
from bastion.evaluation.inputs import BenchInputs
from bastion.evaluation.runner import EventHook, RunEvent, add_indicators, fingerprint, run_suite
from bastion.evaluation.shards import Shard, ShardCheckpoints, ShardLayout, ShardResult, WorkerInfo
from bastion.evaluation.state import RunState
from bastion.evaluation.suite import Suite


# ---- progress events (besides the runner's) ---------------------------------------------
@dataclass(frozen=True)
class ShardsPlanned:
    layout: ShardLayout
    finished: tuple[int, ...]  # indices of the shards read back from the checkpoint
    executor: str


@dataclass(frozen=True)
class ShardStarted:
    shard: Shard
    worker: WorkerInfo


@dataclass(frozen=True)
class ShardFinished:
    result: ShardResult


ShardEvent = ShardsPlanned | ShardStarted | ShardFinished
ShardEventHook = Callable[[RunEvent | ShardEvent], None]


# ---- executors --------------------------------------------------------------------------
class Executor(Protocol):
    """Runs shards somewhere and yields each as it finishes (in any order); a generator, so that
    the driver can close it and the executor release its workers."""

    name: str

    def run(self, inputs: BenchInputs, suite: Suite, shards: Sequence[Shard], *, seed: int,
            batch_size: int | None, on_event: ShardEventHook) -> Generator[ShardResult, None, None]: ...

    def describe(self) -> dict[str, Any]:
        """What the report records about the executor: its name and its workers."""
        ...


def run_shard(inputs: BenchInputs, suite: Suite, shard: Shard, *, seed: int, batch_size: int | None = None,
              on_event: EventHook | None = None) -> RunState:
    """The whole suite on one shard (``inputs`` holds exactly its samples), attacks seeded with the shard's seed."""
    if inputs.index.tolist() != list(range(shard.start, shard.stop)):
        raise UsageError(f"{shard.describe()}: the inputs hold other samples")
    return run_suite(inputs, suite, seed=seed, attack_seed=shard.seed, batch_size=batch_size,
                     on_event=on_event, run_indicators=False)


class LocalExecutor:
    """The shards one after another, in this process, on the model's device."""

    name = "local"

    def run(self, inputs: BenchInputs, suite: Suite, shards: Sequence[Shard], *, seed: int,
            batch_size: int | None, on_event: ShardEventHook) -> Iterator[ShardResult]:
        worker = WorkerInfo.here(str(model_device(inputs.model)))
        for shard in shards:
            on_event(ShardStarted(shard, worker))
            start = time.perf_counter()
            state = run_shard(inputs.shard(shard.positions()), suite, shard, seed=seed, batch_size=batch_size)
            yield ShardResult(shard, state, worker, time.perf_counter() - start)

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "workers": 1}


# ---- the driver -------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardedRun:
    """A finished sharded run: the merged state (with its indicators) and every shard's record."""

    state: RunState
    layout: ShardLayout
    results: tuple[ShardResult, ...]  # in shard order
    executor: dict[str, Any]
    wall_seconds: float

    def record(self) -> dict[str, Any]:
        """The report's ``execution`` section: the shard layout and where each shard ran."""
        return {**self.executor, "shard_size": self.layout.size, "wall_seconds": self.wall_seconds,
                "processes": len({(r.worker.host, r.worker.pid) for r in self.results}),
                "shards": [r.record() for r in self.results]}


def run_sharded(inputs: BenchInputs, suite: Suite, layout: ShardLayout, executor: Executor, *, seed: int = 0,
                batch_size: int | None = None, checkpoint_dir: Path | None = None, resume: bool = False,
                on_event: ShardEventHook | None = None) -> ShardedRun:
    """Run ``suite`` over ``inputs`` (the whole run) shard by shard on ``executor``; see the module docstring.

    With ``checkpoint_dir`` every finished shard is written there at once; ``resume=True`` reads
    them back and runs only the others. Without ``resume`` earlier shard files there are removed.
    """
    emit = on_event or (lambda event: None)
    if layout.n != inputs.total or len(inputs.y) != inputs.total:
        raise UsageError(f"the shard layout covers {layout.n} samples, the run has {inputs.total}")
    start = time.perf_counter()
    expected = fingerprint(inputs, suite, seed)
    store = ShardCheckpoints(checkpoint_dir) if checkpoint_dir is not None else None
    finished: dict[int, ShardResult] = {}
    if store is not None and resume:
        finished = store.finished(expected, layout.shards)
    elif store is not None:
        store.clear()
    pending = [s for s in layout.shards if s.index not in finished]
    emit(ShardsPlanned(layout, tuple(sorted(finished)), executor.name))
    if pending:
        # closing(): the executor releases its workers at once, also when a checkpoint write fails here.
        with closing(executor.run(inputs, suite, pending, seed=seed, batch_size=batch_size, on_event=emit)) as results:
            for result in results:
                if result.state.fingerprint != expected:
                    raise UsageError(f"{result.shard.describe()} came back from another run (different "
                                     f"{', '.join(expected.differences(result.state.fingerprint))})")
                if store is not None:
                    store.save(result)
                finished[result.shard.index] = result
                emit(ShardFinished(result))
    results = tuple(finished[s.index] for s in layout.shards)
    merged = reduce(RunState.merge, (r.state for r in results))
    state = add_indicators(inputs, suite, merged, seed=seed, on_event=emit)
    return ShardedRun(state, layout, results, executor.describe(), time.perf_counter() - start)
