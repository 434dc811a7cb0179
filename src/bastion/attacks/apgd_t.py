"""APGD-T (Croce & Hein 2020): APGD on the targeted DLR loss

    DLR_t(z, y) = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)

(pi the logits sorted in decreasing order), once per target class t: the 2nd, 3rd, ...
most likely class of the clean input, up to ``n_target_classes`` of them. Each pass
runs only on the samples every earlier pass failed to misclassify.
"""

from __future__ import annotations

import torch

from bastion.attacks.apgd import APGD_PARAMS, apgd
from bastion.attacks.base import Attack
from bastion.attacks.params import MAX_CLASSES, Params, integer
from bastion.attacks.registry import register
from bastion.errors import AttackError


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    ordered, _ = logits.sort(dim=1, descending=True)
    true = logits.gather(1, y[:, None]).squeeze(1)
    aimed = logits.gather(1, target[:, None]).squeeze(1)
    return -(true - aimed) / (ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + 1e-12)


@register
class APGDT(Attack):
    name = "apgd-t"
    PARAMS = APGD_PARAMS + Params(integer("n_target_classes", 9, 1, MAX_CLASSES))

    def attack_batch(self, model, x, y, eps):
        clean_logits = self.logits(model, x)
        if clean_logits.shape[1] < 4:
            raise AttackError(f"{self.name}: the targeted DLR loss needs a model with >= 4 classes")
        ranked = clean_logits.argsort(dim=1, descending=True)  # ranked[:, 0] is y (x is correctly classified)
        best = x.clone()
        alive = torch.arange(len(x), device=x.device)
        for k in range(1, min(self.n_target_classes, clean_logits.shape[1] - 1) + 1):
            for _ in range(self.restarts):
                found, fooled = apgd(self, model, x[alive], y[alive], eps, targeted_dlr_loss,
                                     steps=self.steps, rho=self.rho, target=ranked[alive, k])
                best[alive] = found
                alive = alive[~fooled]
                if len(alive) == 0:
                    return best
        return best
