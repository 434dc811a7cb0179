"""APGD-T (Croce & Hein 2020): APGD on the targeted DLR loss

    DLR_t(z, y) = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)

(pi the logits sorted in decreasing order), once per target class t: the 2nd, 3rd, ...
most likely class of the clean input, up to ``n_target_classes`` of them. Each pass
runs only on the samples every earlier pass failed to misclassify.

Targets share batches (:func:`targeted_apgd`): after the first target, once fewer samples
are left than the batch holds, the next few targets of the same samples run together as
rows of one batch, and a sample's rows stop together as soon as one of them fools the model. Each (sample, target)
run is still one APGD run from its own random start; what changes against one target at
a time is only the order in which the random starts are drawn, and that a sample fooled
by one target of a group has spent the steps up to then on the others too.
"""

from __future__ import annotations

import torch

from bastion.attacks.apgd import APGD_PARAMS, Loss, apgd
from bastion.attacks.base import Attack
from bastion.attacks.params import MAX_CLASSES, Params, integer
from bastion.attacks.registry import register
from bastion.attacks.toolbox import ranked_targets
from bastion.errors import AttackError


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    ordered, _ = logits.sort(dim=1, descending=True)
    true = logits.gather(1, y[:, None]).squeeze(1)
    aimed = logits.gather(1, target[:, None]).squeeze(1)
    return -(true - aimed) / (ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + 1e-12)


def targeted_apgd(attack: Attack, model, x: torch.Tensor, y: torch.Tensor, eps: float, targets: torch.Tensor,
                  loss_fn: Loss, *, steps: int, rho: float,
                  restarts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """APGD toward each column of ``targets`` (n, K) in turn, ``restarts`` times each, on the
    samples every earlier run left standing; several targets share a batch where it has room.

    Returns the points (for a fooled sample its first adversarial, else the point of highest
    loss), a bool mask of the fooled samples, and each sample's highest loss over every run it
    was in (for the targeted losses here, how close the nearest target came).
    """
    n, budget = len(x), attack.batch_for(x.device)
    best, best_loss = x.clone(), torch.full((n,), float("-inf"), device=x.device)
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    alive, k = torch.arange(n, device=x.device), 0
    while k < targets.shape[1] and len(alive):
        # The first target runs alone: most samples that fall, fall to it, and should not pay
        # for the other targets' first steps.
        group = 1 if k == 0 else max(1, min(targets.shape[1] - k, budget // len(alive)))
        for _ in range(restarts):
            rows = alive.repeat(group)  # group blocks of the alive samples, one block per target
            aimed = targets[alive, k:k + group].T.flatten()
            siblings = torch.arange(len(alive), device=x.device).repeat(group) if group > 1 else None
            found, hit, loss = apgd(attack, model, x[rows], y[rows], eps, loss_fn, steps=steps, rho=rho,
                                    target=aimed, siblings=siblings)
            hit, loss = hit.view(group, -1), loss.view(group, -1)
            won = hit.any(0)
            # A fooled sample keeps its first target's adversarial, the others their highest-loss point.
            pick = torch.where(won, hit.int().argmax(0), loss.argmax(0)) * len(alive) + torch.arange(
                len(alive), device=x.device)
            best[alive] = found[pick]
            best_loss[alive] = torch.maximum(best_loss[alive], loss.amax(0))
            fooled[alive[won]] = True
            alive = alive[~won]
            if len(alive) == 0:
                break
        k += group
    return best, fooled, best_loss


@register
class APGDT(Attack):
    name = "apgd-t"
    PARAMS = APGD_PARAMS + Params(integer("n_target_classes", 9, 1, MAX_CLASSES))

    def attack_batch(self, model, x, y, eps):
        clean_logits = self.logits(model, x)
        if clean_logits.shape[1] < 4:
            raise AttackError(f"{self.name}: the targeted DLR loss needs a model with >= 4 classes")
        targets = ranked_targets(clean_logits, self.n_target_classes)  # x is correctly classified
        best, _, _ = targeted_apgd(self, model, x, y, eps, targets, targeted_dlr_loss, steps=self.steps, rho=self.rho,
                                   restarts=self.restarts)
        return best
