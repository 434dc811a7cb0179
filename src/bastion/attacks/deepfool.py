"""DeepFool (Moosavi-Dezfooli et al. 2016), batched, Linf and L2.

At the current point, linearise each candidate class k against the true class y:
``f_k = z_k - z_y`` and ``w_k = grad f_k``. The closest linearised boundary is the k
minimising ``|f_k| / ||w_k||_q`` (q the dual norm: 1 for Linf, 2 for L2), and the step
that just reaches it is

    L2:   r = (|f_k| + 1e-4) / ||w_k||_2^2 * w_k
    Linf: r = (|f_k| + 1e-4) / ||w_k||_1   * sign(w_k)

Steps accumulate; the iterate is ``x + (1 + overshoot) * r_total``. Candidates are the
``num_classes`` most likely clean classes. A sample stops as soon as it is misclassified.
"""

from __future__ import annotations

import torch

from bastion.attacks.base import Attack
from bastion.attacks.params import MAX_CLASSES, MAX_STEPS, Params, integer, number
from bastion.attacks.registry import register
from bastion.attacks.toolbox import per_sample


@register
class DeepFool(Attack):
    name = "deepfool"
    PARAMS = Params(
        integer("steps", 50, 1, MAX_STEPS),
        number("overshoot", 0.02, 0),
        integer("num_classes", 10, 2, MAX_CLASSES, help="candidate classes, the most likely first"),
    )

    def attack_batch(self, model, x, y, eps):
        clean_logits = self.logits(model, x)
        n_candidates = min(self.num_classes, clean_logits.shape[1])
        candidates = clean_logits.argsort(dim=1, descending=True)[:, 1:n_candidates]  # the true class is first
        out, r_total = x.clone(), torch.zeros_like(x)
        rows = torch.arange(len(x), device=x.device)
        for step in range(self.steps):
            x_i = (x[rows] + (1 + self.overshoot) * r_total).clamp(*self.threat.bounds)
            classes = torch.cat([y[rows, None], candidates[rows]], 1)
            all_logits, grads = self._logits_and_class_grads(model, x_i, classes)
            fooled = all_logits.argmax(1) != y[rows]
            out[rows[fooled]] = x_i[fooled]
            keep = ~fooled
            if not keep.any():
                return out
            rows, r_total, grads = rows[keep], r_total[keep], grads[keep]
            logits = all_logits[keep].gather(1, classes[keep])
            f = logits[:, 1:] - logits[:, :1]                # (n, K-1) z_k - z_y, negative while correct
            w = grads[:, 1:] - grads[:, :1]                  # (n, K-1, *x.shape[1:])
            w_flat = w.flatten(2)
            dual = w_flat.abs().sum(2) if self.threat.norm == "linf" else w_flat.norm(dim=2)
            self.log_loss(step, f.amax(1))
            closest = (f.abs() / dual.clamp_min(1e-12)).argmin(1)
            pick = lambda t: t[torch.arange(len(t), device=t.device), closest]
            f_k, w_k, dual_k = pick(f).abs(), pick(w), pick(dual).clamp_min(1e-12)
            if self.threat.norm == "linf":
                r = per_sample((f_k + 1e-4) / dual_k, w_k) * w_k.sign()
            else:
                r = per_sample((f_k + 1e-4) / dual_k ** 2, w_k) * w_k
            r_total = r_total + r
        final = (x[rows] + (1 + self.overshoot) * r_total).clamp(*self.threat.bounds)
        out[rows] = final
        return out

    def _logits_and_class_grads(self, model, x, classes):
        """All logits and the input gradient of each of the ``classes`` columns (n, K, ...): one
        forward, K backward passes (samples are independent, so the gradient of a column's sum
        holds every sample's own gradient)."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            picked = logits.gather(1, classes)
            grads = [torch.autograd.grad(picked[:, k].sum(), x, retain_graph=k < classes.shape[1] - 1)[0]
                     for k in range(classes.shape[1])]
        self.count_queries(len(x))
        return logits.detach(), torch.stack(grads, 1)
