"""FAB-T (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast
adaptive boundary attack"), targeted version as used in AutoAttack.

For a target class t, FAB linearises the decision boundary {z_t = z_y} at the current
iterate x_i and projects both x_i and the original point x_o onto that hyperplane
(intersected with the input box), giving steps d_i and d_o. The next iterate is

    x_{i+1} = clip((1 - alpha)(x_i + eta d_i) + alpha (x_o + eta d_o)),
    alpha = min(|d_i| / (|d_i| + |d_o|), alpha_max),

which biases the search toward points close to x_o. Once an iterate is adversarial
FAB steps back toward x_o: x_{i+1} = (1 - beta) x_o + beta x_{i+1}, which shrinks the
perturbation while keeping the linearisation informative. The best (smallest)
adversarial is kept. Targets are the 2nd, 3rd, ... most likely clean classes, one
pass each; a sample leaves the working batch once it has an adversarial inside eps.

After the first target, once fewer samples are left than the batch holds, the next few
targets of the same samples run together, one row per (sample, target). Without a random start FAB is
deterministic, so each row follows the same path it would alone, and a sample is
fooled exactly when it would be with one target at a time (it leaves once any of its
rows has an adversarial inside eps; the adversarial kept may come from another target).
"""

from __future__ import annotations

import torch

from bastion.attacks.base import Attack
from bastion.attacks.params import MAX_CLASSES, MAX_RESTARTS, MAX_STEPS, Params, integer, number
from bastion.attacks.registry import register
from bastion.attacks.toolbox import per_sample, ranked_targets


def project_onto_hyperplane(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor, bounds: tuple[float, float],
                            norm: str) -> torch.Tensor:
    """Smallest ``delta`` (Linf or L2) with ``w . delta = c`` and ``lo <= x + delta <= hi``.

    Moving each coordinate toward the hyperplane as far as the box allows, the minimiser is
    ``delta_i = s_i min(t, room_i)`` (Linf) or ``delta_i = s_i |w_i| min(t, room_i / |w_i|)``
    (L2), with ``s_i`` the helpful sign; ``w . delta`` is then a piecewise-linear,
    non-decreasing function of the scalar ``t``, solved exactly by sorting its breakpoints.
    Where the box does not reach the hyperplane, every coordinate moves to its limit.
    """
    lo, hi = bounds
    flat_x, flat_w = x.flatten(1), w.flatten(1)
    direction = flat_w * c.sign()[:, None]  # moving along +w raises w.delta; we need |c| more of it
    room = torch.where(direction > 0, hi - flat_x, flat_x - lo).clamp_min(0)
    size = flat_w.abs()
    if norm == "linf":
        weight, breakpoint = size, room
    else:
        weight, breakpoint = size ** 2, room / size.clamp_min(1e-12)
    t = _solve_piecewise_linear(weight, breakpoint, c.abs())
    reach = torch.minimum(t[:, None], breakpoint)
    delta = direction.sign() * (reach if norm == "linf" else size * reach)
    return delta.view_as(x)


def _solve_piecewise_linear(weight: torch.Tensor, breakpoint: torch.Tensor, need: torch.Tensor) -> torch.Tensor:
    """Per row, the smallest t >= 0 with sum_i weight_i * min(t, breakpoint_i) = need (or the largest breakpoint)."""
    b, order = breakpoint.sort(dim=1)
    a = weight.gather(1, order)
    ab, acum = (a * b).cumsum(1), a.cumsum(1)
    total = acum[:, -1:]
    value_at = ab + b * (total - acum)  # h(b_k): coordinates below b_k saturated, the rest at b_k
    k = (value_at < need[:, None]).sum(1, keepdim=True)  # breakpoints passed before reaching need
    prev = (k - 1).clamp_min(0)
    ab_prev = torch.where(k > 0, ab.gather(1, prev), torch.zeros_like(need[:, None]))
    a_prev = torch.where(k > 0, acum.gather(1, prev), torch.zeros_like(need[:, None]))
    t = (need[:, None] - ab_prev) / (total - a_prev).clamp_min(1e-12)
    return torch.where(k >= b.shape[1], b[:, -1:], t).squeeze(1)


@register
class FABT(Attack):
    name = "fab-t"
    PARAMS = Params(
        integer("steps", 100, 1, MAX_STEPS),
        integer("restarts", 1, 1, MAX_RESTARTS),
        integer("n_target_classes", 9, 1, MAX_CLASSES),
        number("alpha_max", 0.1, 0, 1),
        number("eta", 1.05, 1),
        number("beta", 0.9, 0, 1, low_open=True),
    )

    def attack_batch(self, model, x, y, eps):
        targets = ranked_targets(self.logits(model, x), self.n_target_classes)  # x is correctly classified
        best = x.clone()
        best_dist = torch.full((len(x),), float("inf"), device=x.device)
        budget, k = self.batch_for(x.device), 0
        while k < targets.shape[1] and (best_dist > eps).any():
            # After the first target (most samples that fall, fall to it), where the batch has room
            # the next targets of the same samples share it, one row each.
            group = 1 if k == 0 else max(1, min(targets.shape[1] - k, budget // int((best_dist > eps).sum())))
            for restart in range(self.restarts):
                alive = (best_dist > eps).nonzero().flatten()
                if len(alive) == 0:
                    return best
                self._run(model, x, y, alive.repeat(group), targets[alive, k:k + group].T.flatten(), eps, best,
                          best_dist, random_start=restart > 0)
            k += group
        return best

    def _run(self, model, x, y, rows, target, eps, best, best_dist, random_start):
        """One FAB pass of each row (a sample, ``rows`` may repeat one) toward its ``target``;
        improves ``best``/``best_dist`` in place."""
        x_orig, yy = x[rows], y[rows]
        x_i = x_orig + 0.5 * (self.random_point(x_orig, eps) - x_orig) if random_start else x_orig.clone()
        for step in range(self.steps):
            f, grad, _ = self.loss_and_grad(model, x_i, yy, lambda logits, labels: _gap(logits, target, labels))
            self.log_loss(step, f)
            # Linearised boundary: f + grad . (z - x_i) = 0. Reaching it from x_i takes grad . d = -f,
            # from x_orig grad . d = -f - grad . (x_orig - x_i); both projections in one call.
            c_orig = -f - (grad * (x_orig - x_i)).flatten(1).sum(1)
            d_i, d_o = self._project(torch.cat([x_i, x_orig]), grad.repeat(2, *[1] * (grad.dim() - 1)),
                                     torch.cat([-f, c_orig])).chunk(2)
            n_i, n_o = self.threat.distance(x_i, x_i + d_i), self.threat.distance(x_orig, x_orig + d_o)
            alpha = per_sample((n_i / (n_i + n_o).clamp_min(1e-12)).clamp(0, self.alpha_max), x_i)
            x_i = ((1 - alpha) * (x_i + self.eta * d_i) + alpha * (x_orig + self.eta * d_o)).clamp(*self.threat.bounds)

            is_adv = self.logits(model, x_i).argmax(1) != yy
            keep_nearest(best, best_dist, rows, x_i, self.threat.distance(x_orig, x_i), is_adv)
            x_i = torch.where(per_sample(is_adv, x_i), (1 - self.beta) * x_orig + self.beta * x_i, x_i)

            keep = best_dist[rows] > eps  # done once an adversarial inside the eps ball is found
            if not keep.all():
                rows, x_i, x_orig, yy, target = rows[keep], x_i[keep], x_orig[keep], yy[keep], target[keep]
                if len(rows) == 0:
                    return

    def _project(self, x, w, c):
        return project_onto_hyperplane(x, w, c, self.threat.bounds, self.threat.norm)


def keep_nearest(best: torch.Tensor, best_dist: torch.Tensor, rows: torch.Tensor, points: torch.Tensor,
                 dist: torch.Tensor, valid: torch.Tensor) -> None:
    """Store each valid point in ``best`` (at its sample, ``rows``) where it is nearer than ``best_dist``.

    Rows may repeat a sample (one row per target): the sample then keeps its nearest point,
    and of equally near ones the first row's, so the result does not depend on write order.
    """
    dist = torch.where(valid, dist, torch.full_like(dist, float("inf")))
    nearest = best_dist.scatter_reduce(0, rows, dist, "amin")
    win = valid & (dist < best_dist[rows]) & (dist == nearest[rows])
    position = torch.arange(len(rows), device=rows.device)
    first = torch.full(best_dist.shape, len(rows), device=rows.device).scatter_reduce(
        0, rows[win], position[win], "amin")
    win &= first[rows] == position
    best[rows[win]], best_dist[rows[win]] = points[win], dist[win]


def _gap(logits: torch.Tensor, target: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_t - z_y: negative until the iterate crosses the boundary between y and the target."""
    return logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)
