"""Square attack (Andriushchenko et al. 2020): score-based random search, Linf and L2.

Minimises the margin ``z_y - max_{k != y} z_k`` using only the model's outputs. Each
iteration proposes a change confined to a random s x s square and keeps it if the
margin falls; a sample is done once its margin is negative (misclassified). The square's
side follows the paper's schedule: ``s = sqrt(p * h * w)``, with p halved at iterations
10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 (rescaled to a 10,000-query budget).

* Linf: start from vertical stripes of +-eps; a proposal sets the square to x +- eps
  (one random sign per channel).
* L2: start from a grid of "pseudo-Gaussian" bumps scaled to norm eps; a proposal moves
  the perturbation mass of two squares (plus any unused budget) into the first one as a
  fresh bump with random sign added to its old content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bastion.attacks.base import Attack
from bastion.attacks.params import MAX_QUERIES, Params, integer, number
from bastion.attacks.registry import register
from bastion.attacks.toolbox import margin, per_sample
from bastion.errors import AttackError

#: (iteration on a 10,000 budget, divisor of p_init) for the iterations up to that one
P_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))


@dataclass
class Search:
    """Square's state on one batch: the best point and margin of each sample still searched."""

    x: torch.Tensor         # the batch's clean inputs
    y: torch.Tensor
    eps: float
    out: torch.Tensor       # what the attack returns: each adversarial as found, else the best point
    rows: torch.Tensor      # positions in the batch of the samples still searched
    x_best: torch.Tensor
    margin: torch.Tensor

    def drop_fooled(self) -> None:
        fooled = self.margin < 0
        if fooled.any():
            self.set_aside(~fooled)

    def set_aside(self, keep: torch.Tensor) -> None:
        """Stop searching the samples outside ``keep``; their best points are what they return."""
        self.out[self.rows[~keep]] = self.x_best[~keep]
        self.rows, self.x_best, self.margin = self.rows[keep], self.x_best[keep], self.margin[keep]

    def finish(self) -> torch.Tensor:
        self.out[self.rows] = self.x_best
        return self.out


@register
class Square(Attack):
    name = "square"
    FAMILY = "black-box"
    PARAMS = Params(
        integer("n_queries", 5000, 1, MAX_QUERIES),
        number("p_init", 0.8, 0, 1, low_open=True, help="initial share of the image a square covers"),
    )

    def attack_batch(self, model, x, y, eps):
        search = self.start(model, x, y, eps)
        self.search(model, search, 1, self.n_queries)
        return search.finish()

    def start(self, model, x, y, eps) -> Search:
        """The initial perturbation of every sample and its margin (the first query)."""
        if x.dim() != 4:
            raise AttackError(f"{self.name}: needs image inputs (N, C, H, W), got shape {tuple(x.shape)}")
        x_best = self._init_linf(x, eps) if self.threat.norm == "linf" else self._init_l2(x, eps)
        return Search(x=x, y=y, eps=eps, out=x.clone(), rows=torch.arange(len(x), device=x.device), x_best=x_best,
                      margin=self._margin(model, x_best, y))

    def search(self, model, s: Search, first: int, last: int) -> None:
        """Iterations ``first`` to ``last`` of the random search (of an ``n_queries`` budget), each
        one proposal and one query per sample still searched; a fooled sample leaves at once."""
        linf = self.threat.norm == "linf"
        for i in range(first, last + 1):
            s.drop_fooled()
            if len(s.rows) == 0 or i == last:
                return
            p, x0 = self._p(i), s.x[s.rows]
            x_new = self._step_linf(x0, s.x_best, p, s.eps) if linf else self._step_l2(x0, s.x_best, p, s.eps)
            new_margin = self._margin(model, x_new, s.y[s.rows])
            better = new_margin < s.margin
            s.x_best = torch.where(per_sample(better, x_new), x_new, s.x_best)
            s.margin = torch.where(better, new_margin, s.margin)

    # ---- the pieces the paper names ---------------------------------------------------
    def _margin(self, model, x, y):
        return margin(self.logits(model, x), y)

    def _p(self, i: int) -> float:
        scaled = int(i / self.n_queries * 10000)
        return self.p_init / next((d for limit, d in P_SCHEDULE if scaled <= limit), 512)

    def _init_linf(self, x, eps):
        n, c, _, w = x.shape
        return (x + eps * self._signs(n, c, 1, w, device=x.device)).clamp(*self.threat.bounds)

    def _step_linf(self, x0, x_best, p, eps):
        n, c, h, w = x0.shape
        s = min(max(round(math.sqrt(p * h * w)), 1), h - 1)
        inside = self._square_mask(n, h, w, s, x0.device)
        sign = self._signs(n, c, 1, 1, device=x0.device)
        # A proposal equal to the current square is a wasted query: take the opposite sign then.
        unchanged = ((x0 + eps * sign).clamp(*self.threat.bounds) - x_best).abs().mul(inside).flatten(1).amax(1) < 1e-7
        sign = torch.where(per_sample(unchanged, sign), -sign, sign)
        return torch.where(inside, (x0 + eps * sign).clamp(*self.threat.bounds), x_best)

    def _init_l2(self, x, eps):
        n, c, h, w = x.shape
        s = max(h // 5, 1)
        grid_h, grid_w = h // s, w // s
        tiles = self._signs(n, c, grid_h, grid_w, device=x.device)
        delta = tiles.repeat_interleave(s, 2).repeat_interleave(s, 3) * _bump_pair(s, x.device).repeat(grid_h, grid_w)
        top, left = (h - s * grid_h) // 2, (w - s * grid_w) // 2
        delta = torch.nn.functional.pad(delta, (left, w - left - s * grid_w, top, h - top - s * grid_h))
        return self.threat.project(x, x + eps * delta / _l2(delta), eps)

    def _step_l2(self, x0, x_best, p, eps):
        n, c, h, w = x0.shape
        s = max(round(math.sqrt(p * h * w)), 3)
        s = min(s + 1 - s % 2, h - 1)  # odd, and it must fit
        first, second = self._square_mask(n, h, w, s, x0.device), self._square_mask(n, h, w, s, x0.device)
        both = first | second
        delta = x_best - x0
        spare = (eps ** 2 - _l2(delta) ** 2).clamp_min(0) / c  # unused budget, per channel
        mass = ((delta * both) ** 2).sum((2, 3), keepdim=True)  # budget freed by clearing both squares
        bump = _place(_bump_pair(s, x0.device), first, self.rand(n, device=x0.device) < 0.5)
        old = delta * first
        fresh = bump * self._signs(n, c, 1, 1, device=x0.device) + old / _channel_l2(old)
        fresh = fresh / _channel_l2(fresh) * (spare + mass).sqrt()
        return self.threat.project(x0, x0 + delta * ~both + fresh, eps)

    # ---- helpers ----------------------------------------------------------------------------
    def _signs(self, *shape, device):
        return torch.where(self.rand(*shape, device=device) < 0.5, -1.0, 1.0)

    def _square_mask(self, n, h, w, s, device):
        """(n, 1, h, w) bool: one s x s square at a random position per sample."""
        top = (self.rand(n, device=device) * (h - s + 1)).long().view(-1, 1, 1, 1)
        left = (self.rand(n, device=device) * (w - s + 1)).long().view(-1, 1, 1, 1)
        r = torch.arange(h, device=device).view(1, 1, -1, 1)
        q = torch.arange(w, device=device).view(1, 1, 1, -1)
        return (r >= top) & (r < top + s) & (q >= left) & (q < left + s)


def _l2(delta: torch.Tensor) -> torch.Tensor:
    return per_sample(delta.flatten(1).norm(dim=1).clamp_min(1e-12), delta)


def _channel_l2(delta: torch.Tensor) -> torch.Tensor:
    return delta.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)


def _bump(rows: int, cols: int, device) -> torch.Tensor:
    """Concentric squares around the centre: pixel value sum_{k >= d} 1 / (k + 1)^2, d its
    Chebyshev distance to the centre, so the bump peaks in the middle and decays outward."""
    rings = max(rows // 2, cols // 2) + 1
    tail = (1.0 / torch.arange(1, rings + 1, device=device) ** 2).flip(0).cumsum(0).flip(0)
    d = torch.maximum((torch.arange(rows, device=device) - rows // 2).abs()[:, None],
                      (torch.arange(cols, device=device) - cols // 2).abs()[None, :])
    return tail[d]


def _bump_pair(s: int, device) -> torch.Tensor:
    """The paper's s x s pattern: a bump on the top half, a negative bump on the bottom half, unit L2 norm."""
    pattern = torch.cat([_bump(s // 2, s, device), -_bump(s - s // 2, s, device)], 0)
    return pattern / pattern.norm()


def _place(pattern: torch.Tensor, mask: torch.Tensor, transpose: torch.Tensor) -> torch.Tensor:
    """Write the s x s ``pattern`` (transposed where ``transpose``) into each sample's square of ``mask``."""
    n, _, h, w = mask.shape
    s = pattern.shape[0]
    patterns = torch.where(transpose.view(-1, 1, 1), pattern.T, pattern)  # (n, s, s)
    canvas = torch.zeros(n, h * w, device=mask.device, dtype=pattern.dtype)
    canvas[mask.flatten(1)] = patterns.flatten()
    return canvas.view(n, 1, h, w)
