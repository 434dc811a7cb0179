"""The checks a model passes on the evaluated samples before attacks use it, in one place.

:func:`prepare` checks every ONNX conversion inside the model against onnxruntime
(:func:`bastion.models.onnx.check_conversion`), then applies the accelerations asked for
(:func:`bastion.models.acceleration.accelerate`, which checks them against fp32 eager). The
benchmark calls it (:func:`bastion.evaluation.benchmark`), and so does ``bastion attack``; what
passed goes into the report.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn

from bastion.models.acceleration import Acceleration, AcceleratedModule, accelerate
from bastion.models.loaded import device_of


@dataclass(frozen=True)
class Prepared:
    """The module the attacks run on, and the checks it passed (for the report)."""

    module: nn.Module
    accelerations: tuple[str, ...]
    checks: tuple[dict, ...]

    def to_dict(self) -> dict:
        return {"accelerations": list(self.accelerations), "checks": list(self.checks)}


def prepare(module: nn.Module, x: torch.Tensor, acceleration: Acceleration | None = None, *,
            batch_size: int | None = None) -> Prepared:
    """Check ``module`` on the samples ``x`` and accelerate it as asked (see the module docstring)."""
    acceleration = acceleration or Acceleration()
    batch = batch_size or 256
    checks: list[dict] = []
    onnx = sys.modules.get("bastion.models.onnx")  # loaded with the first ONNX model: none before it
    if onnx is not None:
        checks += [c.to_dict() for c in onnx.check_conversion(module, x.to(device_of(module)), batch)]
    accelerated = accelerate(module, x, acceleration, batch_size=batch)
    if isinstance(accelerated, AcceleratedModule):
        checks += [c.to_dict() for c in accelerated.checks]
    return Prepared(module=accelerated, accelerations=acceleration.names, checks=tuple(checks))
