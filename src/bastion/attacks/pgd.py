"""PGD (Madry et al. 2018): projected steepest ascent on the cross-entropy from a random
start in the eps ball, with restarts for the samples that survive."""

from __future__ import annotations

import torch

from bastion.attacks.base import Attack
from bastion.attacks.registry import register
from bastion.attacks.toolbox import ascent_step
from bastion.errors import AttackError


@register
class PGD(Attack):
    name = "pgd"

    def __init__(self, threat, *, steps: int = 40, step_size: float | None = None, restarts: int = 1,
                 random_start: bool = True, **kwargs):
        super().__init__(threat, **kwargs)
        if int(steps) < 1 or int(restarts) < 1 or (step_size is not None and not step_size > 0):
            raise AttackError(f"{self.name}: need steps >= 1, restarts >= 1 and step_size > 0 (or unset)")
        self.steps, self.restarts, self.use_random_start = int(steps), int(restarts), bool(random_start)
        self.step_size = step_size  # None: 2.5 * eps / steps (Madry et al.)

    def params(self):
        return {**super().params(), "steps": self.steps, "step_size": self.step_size,
                "restarts": self.restarts, "random_start": self.use_random_start}

    def attack_batch(self, model, x, y, eps):
        alpha = self.step_size or 2.5 * eps / self.steps
        best = x.clone()
        alive = torch.arange(len(x), device=x.device)  # samples not yet fooled
        for _ in range(self.restarts):
            x0, y0 = x[alive], y[alive]
            x_adv = self.random_point(x0, eps) if self.use_random_start else x0.clone()
            idx = torch.arange(len(x0), device=x.device)  # rows of x0 still being optimised
            for step in range(self.steps + 1):
                if step == self.steps:  # the last point needs a prediction, not a gradient
                    logits = self.logits(model, x_adv)
                else:
                    loss, grad, logits = self.loss_and_grad(model, x_adv, y0[idx])
                fooled = logits.argmax(1) != y0[idx]
                best[alive[idx[fooled]]] = x_adv[fooled]
                keep = ~fooled
                if step == self.steps or not keep.any():
                    best[alive[idx[keep]]] = x_adv[keep]
                    break
                self.log_loss(step, loss)
                idx, x_adv, grad = idx[keep], x_adv[keep], grad[keep]
                x_adv = ascent_step(self.threat, x0[idx], x_adv, grad, alpha, eps)
            alive = alive[idx[keep]] if keep.any() else alive[:0]
            if len(alive) == 0:
                break
        return best
