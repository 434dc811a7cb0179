"""Training checkpoints: one file, written atomically after every epoch.

The file holds everything a resumed run needs to continue exactly where an
uninterrupted one would be: the raw (trained) weights and the optimizer state, the
averaged weights when the recipe averages them, the schedule position (global
step), the completed epoch, both random generators, the best weights seen so far,
the per-epoch history and the count of AWP-perturbed steps. It is written between
steps, where AWP has put the unperturbed weights back, so it never holds a
perturbation (AWP keeps none from one step to the next). It is written with ``torch.save`` and
read back with ``torch.load(weights_only=True)``, which only rebuilds tensors
and plain containers, so a checkpoint cannot run code when loaded.

In data-parallel training rank 0 alone writes it, and on resume reads its bytes
(:func:`read_checkpoint`) for every rank to load (see :mod:`.distributed`); it records how
many processes wrote it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bastion.defenses.training.averaging import WeightAverage
from bastion.errors import UsageError
from bastion.fsutil import atomic_write_bytes

CHECKPOINT_FILE = "last.pt"
FORMAT = 2  # 2: averaged weights, restored_epoch, awp_steps (and processes; absent in older files = 1)


@dataclass
class TrainingState:
    """What survives between epochs (and between processes, through the checkpoint)."""

    recipe_digest: str
    seed: int
    epoch: int = 0                 # epochs completed
    step: int = 0                  # optimizer steps taken (the schedule's position)
    seconds: float = 0.0           # wall time spent training so far, across resumes
    cpu_seconds: float = 0.0
    best_epoch: int = 0
    best_robust: float = -1.0
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # what the user is told, e.g. a guard restore
    restored_epoch: int | None = None  # the epoch whose weights the collapse guard restored, if it did
    awp_steps: int = 0             # optimizer steps taken at AWP-perturbed weights
    finished: bool = False
    processes: int = 1             # training processes (ranks) of the run that wrote the checkpoint


def checkpoint_path(directory: str | Path) -> Path:
    return Path(directory) / CHECKPOINT_FILE


def read_checkpoint(directory: str | Path) -> bytes | None:
    """The checkpoint file's bytes, or None when there is none."""
    try:
        return checkpoint_path(directory).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def refuse_to_overwrite(directory: str | Path) -> UsageError:
    """The error for a checkpoint left by an earlier run when --resume was not asked for."""
    return UsageError(f"{checkpoint_path(directory)} exists from an earlier run: pass --resume to continue it, "
                      f"or delete {directory} to start over")


def save_checkpoint(directory: str | Path, state: TrainingState, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, generator: torch.Generator,
                    average: WeightAverage | None = None) -> Path:
    payload = {
        "format": FORMAT,
        "meta": json.dumps({
            "recipe_digest": state.recipe_digest, "seed": state.seed, "epoch": state.epoch, "step": state.step,
            "seconds": state.seconds, "cpu_seconds": state.cpu_seconds, "best_epoch": state.best_epoch,
            "best_robust": state.best_robust, "history": state.history, "events": state.events,
            "restored_epoch": state.restored_epoch, "awp_steps": state.awp_steps, "finished": state.finished,
            "processes": state.processes,
        }),
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "average": average.state_dict() if average is not None else {},
        "best_weights": state.best_weights,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = checkpoint_path(directory)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, *, recipe_digest: str, seed: int,
                    average: WeightAverage | None = None, data: bytes | None = None) -> TrainingState:
    """Restore ``model``, ``optimizer``, ``generator`` (and ``average``) in place; return the saved state.

    ``data`` is the file's content when it was read already (by rank 0, for every rank).
    """
    path = checkpoint_path(directory)
    try:
        payload = torch.load(path if data is None else io.BytesIO(data), map_location="cpu", weights_only=True)
        meta = json.loads(payload["meta"])
        if payload.get("format") != FORMAT:
            raise ValueError(f"format {payload.get('format')!r}")
    except Exception as exc:  # torch raises many types for a corrupt file
        raise UsageError(f"{path}: unreadable checkpoint ({type(exc).__name__}); delete the folder "
                         f"{Path(directory)} to start over") from None
    if meta["recipe_digest"] != recipe_digest or meta["seed"] != seed:
        raise UsageError(f"{path}: checkpoint was written by a different recipe or seed; use the same "
                         f"--recipe/--seed/--epochs to resume, or delete {Path(directory)} to start over")
    model.load_state_dict(payload["model"])
    if average is not None:  # the recipe digest matched, so the file holds the average
        average.load_state_dict(payload["average"])
    optimizer.load_state_dict(payload["optimizer"])
    generator.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    return TrainingState(
        recipe_digest=recipe_digest, seed=seed, epoch=meta["epoch"], step=meta["step"], seconds=meta["seconds"],
        cpu_seconds=meta["cpu_seconds"], best_epoch=meta["best_epoch"], best_robust=meta["best_robust"],
        best_weights=dict(payload["best_weights"]), history=meta["history"], events=meta["events"],
        restored_epoch=meta["restored_epoch"], awp_steps=meta["awp_steps"], finished=meta["finished"],
        processes=meta.get("processes", 1))
