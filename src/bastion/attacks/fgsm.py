"""FGSM (Goodfellow et al. 2015): one step of size eps along the gradient's sign (Linf)
or its unit direction (L2)."""

from __future__ import annotations

from bastion.attacks.base import Attack
from bastion.attacks.registry import register
from bastion.attacks.toolbox import steepest_ascent


@register
class FGSM(Attack):
    name = "fgsm"

    def attack_batch(self, model, x, y, eps):
        loss, grad, _ = self.loss_and_grad(model, x, y)
        self.log_loss(0, loss)
        return x + eps * steepest_ascent(grad, self.threat.norm)
