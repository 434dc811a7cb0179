"""APGD-MM: APGD on the minimum-margin loss toward the top-ranked target classes, with the
extra effort spent only where it can still pay.

The loss is Gao et al.'s (ICML 2022, "Fast and Reliable Evaluation of Adversarial
Robustness with Minimum-Margin Attack"): the targeted margin

    MM_t(z, y) = z_t - z_y,

positive exactly when the model prefers the target t to the true class. Unlike
cross-entropy it does not saturate on confident (or scaled) logits, and APGD's sign steps
and loss comparisons make it blind to the logits' scale. The targets are the classes the
clean logits rank 2nd, 3rd, ...; as in their sequential target ranking, the nearest
classes come first and a sample stops as soon as one target succeeds. Targets share
batches as in APGD-T (apgd_t.py).

1. First pass, every sample: APGD (Croce & Hein 2020) on MM_t for each of the
   ``n_target_classes`` top targets.
2. Second pass, only the samples whose margin is still small: each sample's best margin
   after the first pass, ``min_t (z_y - z_t)`` at its best point, as a share of its clean
   margin ``z_y - z_pi2``. Where at most ``margin_threshold`` of it is left, the sample gets
   ``extra_restarts`` fresh random starts on the same targets and ``extra_target_classes``
   further targets. A sample the first pass left far from every boundary would need a much
   stronger attack than a restart to break; this is the online statistics-based discarding
   of Adaptive Auto Attack (Liu et al., CVPR 2022), which spends restarts only on the
   samples whose loss says they are within reach.
"""

from __future__ import annotations

import torch

from bastion.attacks.apgd import APGD_PARAMS
from bastion.attacks.apgd_t import targeted_apgd
from bastion.attacks.base import Attack
from bastion.attacks.params import MAX_CLASSES, MAX_RESTARTS, Params, integer, number
from bastion.attacks.registry import register
from bastion.attacks.toolbox import margin, ranked_targets


def minimum_margin_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """z_t - z_y (Gao et al. 2022): to maximise; positive once the model prefers the target."""
    return -margin(logits, y, target)


@register
class APGDMM(Attack):
    name = "apgd-mm"
    PARAMS = APGD_PARAMS + Params(
        integer("n_target_classes", 3, 1, MAX_CLASSES, help="targets of the first pass, the most likely first"),
        integer("extra_target_classes", 6, 0, MAX_CLASSES, help="further targets of the second pass"),
        integer("extra_restarts", 1, 0, MAX_RESTARTS, help="fresh starts on the first targets, second pass"),
        number("margin_threshold", 0.5, 0, 1, help="share of the clean margin left that earns the second pass"),
    )

    def attack_batch(self, model, x, y, eps):
        clean_logits = self.logits(model, x)
        targets = ranked_targets(clean_logits, self.n_target_classes + self.extra_target_classes)
        first, extra = targets[:, :self.n_target_classes], targets[:, self.n_target_classes:]
        best, fooled, loss = self._pass(model, x, y, eps, first, self.restarts)

        clean_margin = margin(clean_logits, y).clamp_min(1e-12)  # positive: x is correctly classified
        close = ~fooled & (-loss <= self.margin_threshold * clean_margin)
        rows = close.nonzero().flatten()
        for targets_, restarts in ((first, self.extra_restarts), (extra, self.restarts)):
            if len(rows) == 0 or targets_.shape[1] == 0 or restarts == 0:
                continue
            found, hit, _ = self._pass(model, x[rows], y[rows], eps, targets_[rows], restarts)
            best[rows[hit]] = found[hit]
            rows = rows[~hit]
        return best

    def _pass(self, model, x, y, eps, targets, restarts):
        return targeted_apgd(self, model, x, y, eps, targets, minimum_margin_loss, steps=self.steps, rho=self.rho,
                             restarts=restarts)
