"""Weight averaging: an exponential moving average (EMA) of the weights (Gowal et al. 2020,
"Uncovering the Limits of Adversarial Training against Norm-Bounded Adversarial Examples").

After every optimizer step ``t`` (counted from 0) the average moves towards the trained weights::

    avg <- d_t * avg + (1 - d_t) * w,    d_t = min(decay, (1 + t) / (10 + t))

The warm-up ``(1 + t) / (10 + t)`` is their code's (TF-style) dynamic decay: early averages
forget the random initialisation fast, later ones average over about ``1 / (1 - decay)`` steps
(200 at their ``decay = 0.995``). The averaged weights are the model: the held-out check
evaluates them and the bundle holds them; the raw weights keep training.

Every floating-point entry of the state dict is averaged, buffers included (BatchNorm's running
mean and variance, like timm's ModelEmaV2), and integer buffers (BatchNorm's batch counter) are
copied, so an averaged model with normalisation layers evaluates with statistics that follow it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """The averaged copy of a model being trained (``.module``), updated in place by :meth:`update`."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model)
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in ``model``'s weights after optimizer step ``step`` (0 for the first)."""
        d = self.decay_at(step)
        averaged = self.module.state_dict()  # tensors that share storage with self.module
        for name, value in model.state_dict().items():
            target = averaged[name]
            if target.is_floating_point():
                target.mul_(d).add_(value, alpha=1.0 - d)
            else:
                target.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(weights)
