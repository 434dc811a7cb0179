"""Options and printing shared by the CLI commands."""

from __future__ import annotations

import json
import sys

import click
import torch


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=_json_default))


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def pick_device(name: str) -> torch.device:
    from bastion.errors import UsageError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available here")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r}: not a device name (use cpu, cuda, cuda:N or auto)") from None


model_option = click.option("--model", "-m", "model_ref", default="mnist-cnn", show_default=True,
                            help="Zoo name, bundle directory, .pt2 file, or package.module:factory (with --weights).")
weights_option = click.option("--weights", type=click.Path(dir_okay=False),
                              help="Weights (.safetensors) for a package.module:factory model.")
data_option = click.option("--data", "-d", "data_ref", default="mnist", show_default=True,
                           help="mnist (bundled 1,000-image test split), digits, or a .npz/.pt file with x and y.")
device_option = click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress output.")


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()
