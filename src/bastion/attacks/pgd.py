"""PGD (Madry et al. 2018): projected steepest ascent on the cross-entropy from a random
start in the eps ball, with restarts for the samples that survive."""

from __future__ import annotations

import torch

from bastion.attacks.base import Attack
from bastion.attacks.params import MAX_RESTARTS, MAX_STEPS, Params, boolean, integer, number
from bastion.attacks.registry import register
from bastion.attacks.toolbox import ascent_step


@register
class PGD(Attack):
    name = "pgd"
    PARAMS = Params(
        integer("steps", 40, 1, MAX_STEPS),
        number("step_size", None, 0, low_open=True, optional=True, help="unset: 2.5 * eps / steps (Madry et al.)"),
        integer("restarts", 1, 1, MAX_RESTARTS),
        boolean("random_start", True),
    )

    def attack_batch(self, model, x, y, eps):
        alpha = self.step_size or 2.5 * eps / self.steps
        best = x.clone()
        alive = torch.arange(len(x), device=x.device)  # samples not yet fooled
        for _ in range(self.restarts):
            x0, y0 = x[alive], y[alive]
            x_adv = self.random_point(x0, eps) if self.random_start else x0.clone()
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
