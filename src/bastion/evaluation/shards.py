"""Shards of a benchmark: contiguous ranges of its samples, their seeds, and their checkpoint files.

Per-sample attacks are independent, so the worst case over a shard's samples does not depend on
the other shards. What does depend on the layout is each shard's randomness: it is fixed by
(run seed, shard index) in one place, :func:`shard_seed`, so every executor given the same
layout gives the same per-sample outcomes (:mod:`bastion.evaluation.executors`).

A finished shard is checkpointed as one file, ``shard-NNNNN.json`` (written atomically), holding
its range, its seed, where it ran and its :class:`~bastion.evaluation.state.RunState`;
:class:`ShardCheckpoints` reads them back on ``--resume`` and refuses, in one line, a file from
another run or another layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bastion.errors import UsageError
from bastion.evaluation.state import Fingerprint, RunState
from bastion.fsutil import atomic_write_text

#: Samples per shard when an executor is chosen without a shard size: a few minutes of the
#: standard suite on one CPU core (about 2.5 s per robust sample, see the CLI's DEFAULT_N), so a
#: lost shard costs little. GPUs want larger shards (1,000 fills their default attack batch).
DEFAULT_SHARD_SIZE = 100
SHARD_FILE_VERSION = 1


def shard_seed(seed: int, index: int) -> int:
    """The seed of the attacks of shard ``index`` in a run seeded with ``seed``: the one derivation.

    Shard 0 keeps the run's seed, so a run in one shard is exactly the unsharded run. Shard
    ``k > 0`` takes the first four bytes (big-endian) of
    ``sha256("bastion/shard-seed/1:{seed}:{k}")``: unrelated to its neighbours' seeds, the same on
    every machine and Python version, and below 2**32 so every attack (ART's numpy generator
    included) accepts it.
    """
    if index == 0:
        return seed
    digest = hashlib.sha256(f"bastion/shard-seed/1:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class Shard:
    """Samples ``start`` (inclusive) to ``stop`` (exclusive) of the run, attacked with ``seed``."""

    index: int
    start: int
    stop: int
    seed: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def positions(self) -> torch.Tensor:
        return torch.arange(self.start, self.stop)

    def describe(self) -> str:
        return f"shard {self.index} (samples {self.start}-{self.stop - 1})"


@dataclass(frozen=True)
class ShardLayout:
    """The run's samples cut into contiguous shards of ``size`` (the last may be smaller)."""

    size: int
    shards: tuple[Shard, ...]

    @classmethod
    def contiguous(cls, n: int, size: int, seed: int) -> ShardLayout:
        if size <= 0:
            raise UsageError(f"--shard-size must be positive, got {size}")
        return cls(size, tuple(Shard(k, start, min(start + size, n), shard_seed(seed, k))
                               for k, start in enumerate(range(0, n, size))))

    @property
    def n(self) -> int:
        return self.shards[-1].stop if self.shards else 0


@dataclass(frozen=True)
class WorkerInfo:
    """Where a shard ran."""

    host: str
    pid: int
    device: str

    @classmethod
    def here(cls, device: str) -> WorkerInfo:
        return cls(host=socket.gethostname(), pid=os.getpid(), device=device)


@dataclass(frozen=True)
class ShardResult:
    """A finished shard: its state (outcomes keyed by global sample index), where and how long it ran."""

    shard: Shard
    state: RunState
    worker: WorkerInfo
    seconds: float
    from_checkpoint: bool = False  # read back from an earlier run's checkpoint, not computed in this one

    def record(self) -> dict[str, Any]:
        """The report's line for this shard."""
        return {**asdict(self.shard), **asdict(self.worker), "seconds": self.seconds,
                "robust_at_largest_eps": len(self.state.standing(max(self.state.fingerprint.eps))),
                "from_checkpoint": self.from_checkpoint}


class ShardCheckpoints:
    """One file per finished shard in ``folder``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.json"

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.json")) if self.folder.is_dir() else []

    def save(self, result: ShardResult) -> None:
        atomic_write_text(self.path(result.shard.index), json.dumps({
            "version": SHARD_FILE_VERSION, "shard": asdict(result.shard), "worker": asdict(result.worker),
            "seconds": result.seconds, "state": json.loads(result.state.to_json())}))

    def clear(self) -> None:
        for path in self.files():
            path.unlink()

    def finished(self, expected: Fingerprint, shards: tuple[Shard, ...]) -> dict[int, ShardResult]:
        """The shards of this run and layout already finished (read back, marked ``from_checkpoint``)."""
        found = {}
        for path in self.files():
            result = self._read(path, expected, shards)
            found[result.shard.index] = result
        return found

    def _read(self, path: Path, expected: Fingerprint, shards: tuple[Shard, ...]) -> ShardResult:
        again = "rerun without --resume to start over"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{path}: unreadable shard checkpoint ({exc}); {again}") from None
        if not isinstance(raw, dict) or raw.get("version") != SHARD_FILE_VERSION:
            raise UsageError(f"{path}: shard checkpoint from another bastion version; {again}")
        try:
            shard, worker = Shard(**raw["shard"]), WorkerInfo(**raw["worker"])
            seconds, state_json = float(raw["seconds"]), json.dumps(raw["state"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{path}: unreadable shard checkpoint (bad or missing field: {exc}); {again}") from None
        state = RunState.from_json(state_json, source=str(path))
        changed = expected.differences(state.fingerprint)
        if changed:
            raise UsageError(f"{path}: shard checkpoint was made with a different {', '.join(changed)}; "
                             f"{again} or choose another --out")
        planned = shards[shard.index] if 0 <= shard.index < len(shards) else None
        if shard != planned or path != self.path(shard.index):
            raise UsageError(f"{path}: shard checkpoint of samples {shard.start}-{shard.stop - 1} does not fit this "
                             f"run's shard layout; resume with the --shard-size it was made with, or {again}")
        if state.samples != tuple(range(shard.start, shard.stop)):
            raise UsageError(f"{path}: shard checkpoint holds other samples than its range; {again}")
        return ShardResult(shard, state, worker, seconds, from_checkpoint=True)
