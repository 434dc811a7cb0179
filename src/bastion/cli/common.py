"""Options, printing, key passphrases and the rules shared by the CLI commands (--n, --resume).

Imports nothing heavy: torch is imported inside :func:`pick_device` only, so the
commands that need no model start at once.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Callable

import click

from bastion.errors import KeyFileError, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from bastion.data import Dataset

PASSPHRASE_ENV = "BASTION_KEY_PASSPHRASE"


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=_json_default))


def _json_default(obj):
    if hasattr(obj, "tolist"):  # torch tensors and numpy arrays, without importing either
        return obj.tolist()
    return str(obj)


def pick_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available here")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r}: not a device name (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s) here "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device


def warn(text: str) -> None:
    """A warning on stderr, shown even with --quiet and --json (stdout keeps only the JSON)."""
    click.echo(f"warning: {text}", err=True)


def resume_requested(resume: bool, found: bool, checkpoint: Path) -> bool:
    """The one --resume rule (bench and train): with a checkpoint (``found`` at ``checkpoint``),
    continue it; without one, warn on stderr (even under --quiet and --json) and start a new run.
    Whether to resume."""
    if resume and not found:
        warn(f"--resume: no checkpoint at {checkpoint}; starting a new run")
        return False
    return resume


def choose_samples(data: Dataset, n: int | None, default: int | None) -> Dataset:
    """The one --n rule: ``--n N`` takes exactly the first N samples and is refused when the data
    holds fewer (never clamped); without --n, the first ``default`` (or all, if there are fewer)."""
    from bastion.errors import DataError

    if n is None:
        return data.take(default)
    try:
        return data.first(n)
    except DataError as exc:
        raise UsageError(f"--n: {exc}") from None


def seed_range() -> click.IntRange:
    """What --seed accepts: the integers torch's generators take."""
    return click.IntRange(-(2 ** 63), 2 ** 64 - 1)


def passphrase_for(path: str) -> Callable[[], bytes]:
    """Where the passphrase of the encrypted key at ``path`` comes from: $BASTION_KEY_PASSPHRASE, else a prompt.

    The library calls it only if the key really is encrypted (never from a command-line argument).
    """
    def ask() -> bytes:
        from_env = os.environ.get(PASSPHRASE_ENV)
        if from_env:
            return from_env.encode()
        try:
            return click.prompt(f"Passphrase for {path}", hide_input=True, err=True).encode()
        except click.exceptions.Abort:
            raise KeyFileError(f"{path}: the key is encrypted and no passphrase was given "
                               f"(set {PASSPHRASE_ENV} or run interactively)") from None
    return ask


def passphrase_for_new_key(encrypt: bool) -> bytes | None:
    """The passphrase a new key is encrypted with: $BASTION_KEY_PASSPHRASE, else (with ``encrypt``) a prompt."""
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env:
        return from_env.encode()
    if not encrypt:
        return None
    try:
        value = click.prompt("Passphrase for the new key", hide_input=True, confirmation_prompt=True,
                             err=True, default="", show_default=False)
    except click.exceptions.Abort:
        raise UsageError(f"--encrypt: no passphrase was given (set {PASSPHRASE_ENV} or run interactively)") from None
    if not value:
        raise UsageError(f"--encrypt: the passphrase is empty (type one, or set {PASSPHRASE_ENV})")
    return value.encode()


model_option = click.option("--model", "-m", "model_ref", default="mnist-cnn", show_default=True,
                            help="Zoo name, bundle directory, .pt2 file, or package.module:factory (with --weights).")
weights_option = click.option("--weights", type=click.Path(dir_okay=False),
                              help="Weights (.safetensors) for a package.module:factory model.")
data_option = click.option("--data", "-d", "data_ref", default="mnist", show_default=True,
                           help="mnist (bundled 1,000-image test split), digits, or a .npz/.pt file with x and y.")
device_option = click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
seed_option = click.option("--seed", type=seed_range(), default=0, show_default=True, help="Random seed.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress output.")
