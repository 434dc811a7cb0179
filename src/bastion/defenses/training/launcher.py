"""``bastion train --nproc N``: torch's elastic launcher, the one ``torchrun`` runs, started in-process.

``launch(args, nproc=2)`` runs what ``torchrun --standalone --nproc-per-node 2 -m bastion.train ARGS``
runs: ``torch.distributed.run`` parses the same flags, and its elastic agent starts the ranks, watches
them and stops them all when one fails. Across hosts every host runs the same command with
``nnodes`` and the same c10d rendezvous endpoint and id (:func:`torchrun_args`).

There are no restarts: a job that lost a rank stops, and ``--resume`` continues it from its last
checkpoint. The failure becomes one :class:`~bastion.errors.TrainingProcessFailed` that says which
rank failed and how, instead of the agent's log lines.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager

from bastion.defenses.training.distributed import threads_per_process
from bastion.errors import TrainingProcessFailed, UsageError

MODULE = "bastion.train"   # what each rank runs: `python -m bastion.train ARGS` is `bastion train ARGS`
RDZV_ID = "bastion-train"
#: Exit statuses bastion's command line gives after printing its own one-line error.
REPORTED = (1, 2, 70, 130)


def torchrun_args(rank_args: list[str], *, nproc: int, nnodes: int = 1, rdzv_endpoint: str | None = None,
                  rdzv_id: str = RDZV_ID) -> list[str]:
    """The ``torchrun`` flags (and module) of the job: one host on a free local port, or ``nnodes``
    hosts meeting at ``rdzv_endpoint`` (c10d, hosted by the first rank to reach it)."""
    if nproc < 1 or nnodes < 1:
        raise UsageError(f"--nproc and --nnodes must be >= 1, got {nproc} and {nnodes}")
    if rdzv_endpoint is None:
        if nnodes > 1:
            raise UsageError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT, the same on every host")
        rendezvous = ["--standalone"]
    else:
        rendezvous = ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint,
                      "--rdzv-id", rdzv_id]
    return [*rendezvous, "--nproc-per-node", str(nproc), "--max-restarts", "0", "-m", MODULE, *rank_args]


def launch(rank_args: list[str], *, nproc: int, nnodes: int = 1, rdzv_endpoint: str | None = None,
           rdzv_id: str = RDZV_ID, resume_hint: str = "") -> None:
    """Run ``python -m bastion.train RANK_ARGS`` as ``nproc`` ranks on this host and wait for them all.

    Raises :class:`~bastion.errors.TrainingProcessFailed` when a rank fails (``resume_hint`` ends its
    message), :class:`~bastion.errors.UsageError` when the hosts cannot meet.
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError

    args = torchrun.parse_args(torchrun_args(rank_args, nproc=nproc, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint,
                                             rdzv_id=rdzv_id))
    # torchrun would set 1 thread per rank and log a warning; each rank sets its share itself (distributed.join).
    with _default_env("OMP_NUM_THREADS", str(threads_per_process(nproc))), _agent_logs_quiet(), \
            tempfile.TemporaryDirectory(prefix="bastion-train-") as agent_files:
        args.log_dir = agent_files  # the agent's per-rank error files; torchrun leaves its default folder behind
        try:
            torchrun.run(args)
        except ChildFailedError as exc:
            raise _failure(exc, resume_hint) from None
        except RendezvousError as exc:
            where = f"at {rdzv_endpoint}" if rdzv_endpoint else "on this host"
            why = str(exc.__cause__ or exc).strip().splitlines()[0]  # torch's own says "see inner exception"
            raise UsageError(f"the training processes could not meet {where}: {why}") from None
        except SignalException:  # the agent turns SIGINT/SIGTERM into this after stopping the ranks
            raise KeyboardInterrupt from None


def _failure(exc, resume_hint: str) -> TrainingProcessFailed:
    rank, failure = exc.get_first_failure()
    code = failure.exitcode
    if code < 0:
        return TrainingProcessFailed(f"training process {rank} (pid {failure.pid}) was killed by "
                                     f"{failure.signal_name()}, and the launcher stopped the others. {resume_hint}",
                                     exit_code=130)
    if code in REPORTED:  # the rank printed its one-line error; the command adds nothing
        return TrainingProcessFailed(f"training process {rank} failed", exit_code=code, reported=True)
    return TrainingProcessFailed(f"training process {rank} (pid {failure.pid}) exited with status {code}, and the "
                                 f"launcher stopped the others. {resume_hint}", exit_code=70)


@contextmanager
def _default_env(name: str, value: str):
    """``name=value`` in the environment the ranks inherit, unless the user set it; restored after."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


@contextmanager
def _agent_logs_quiet():
    """Silence the elastic agent's log lines (they repeat what the one-line failure says);
    BASTION_DEBUG=1 keeps them."""
    if os.environ.get("BASTION_DEBUG"):
        yield
        return
    loggers = [logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict)
               if name.startswith("torch.distributed")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
