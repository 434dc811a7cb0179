"""Carlini & Wagner L2 (2017): minimise ``||x' - x||_2^2 + c * f(x')`` with Adam, where

    x' = lo + (hi - lo) (tanh(w) + 1) / 2            (always inside the input box)
    f(x') = max(z_y - max_{i != y} z_i, -confidence)  (<= -confidence once misclassified)

and ``c`` is found per sample by binary search: halved toward the last failure after a
success, raised (x10 until a success brackets it) after a failure. The smallest
adversarial found over all searches is kept. As in the paper, a search stops early once
its total loss has not fallen over a tenth of its steps.

CW is a minimum-norm attack: every sample keeps being optimised for the whole schedule
(a fooled sample still shrinks its perturbation), so use a large eps to read off minimal
perturbations; the base then keeps those inside eps.
"""

from __future__ import annotations

import torch

from bastion.attacks.base import Attack
from bastion.attacks.params import MAX_SEARCH_STEPS, MAX_STEPS, Params, integer, number
from bastion.attacks.registry import register
from bastion.attacks.toolbox import margin, per_sample

NO_UPPER_BOUND = 1e10


@register
class CarliniWagnerL2(Attack):
    name = "cw-l2"
    norms = ("l2",)
    PARAMS = Params(
        integer("steps", 100, 1, MAX_STEPS),
        integer("binary_search_steps", 9, 1, MAX_SEARCH_STEPS),
        number("confidence", 0.0, 0),
        number("lr", 0.01, 0, low_open=True),
        number("initial_const", 1e-3, 0, low_open=True),
    )

    def attack_batch(self, model, x, y, eps):
        lo, hi = self.threat.bounds
        to_box = lambda w: lo + (hi - lo) * (torch.tanh(w) + 1) / 2
        w_clean = torch.atanh(((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        const = torch.full((len(x),), self.initial_const, device=x.device)
        lower, upper = torch.zeros_like(const), torch.full_like(const, NO_UPPER_BOUND)
        best, best_l2 = x.clone(), torch.full_like(const, float("inf"))
        for search in range(self.binary_search_steps):
            w = w_clean.clone().requires_grad_(True)
            optimiser = torch.optim.Adam([w], lr=self.lr)
            succeeded = torch.zeros(len(x), dtype=torch.bool, device=x.device)
            check_every, last_check = max(self.steps // 10, 1), float("inf")
            for step in range(self.steps):
                with torch.enable_grad():
                    x_adv = to_box(w)
                    logits = model(x_adv)
                    l2_squared = (x_adv - x).flatten(1).pow(2).sum(1)
                    loss = l2_squared + const * self._f(logits, y)
                    optimiser.zero_grad()
                    loss.sum().backward()
                self.count_queries(len(x))
                self.log_loss(step, loss.detach())
                # The point just evaluated (before this step's update) is the one whose logits we hold.
                fooled = (logits.detach().argmax(1) != y) & (self._f(logits.detach(), y) <= -self.confidence)
                l2 = l2_squared.detach().sqrt()
                closer = fooled & (l2 < best_l2)
                best = torch.where(per_sample(closer, x), x_adv.detach(), best)
                best_l2 = torch.where(closer, l2, best_l2)
                succeeded |= fooled
                optimiser.step()
                if step % check_every == check_every - 1:  # CW's early abort: the loss stopped falling
                    if loss.sum().item() > 0.9999 * last_check:
                        break
                    last_check = loss.sum().item()
            upper = torch.where(succeeded, torch.minimum(upper, const), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, const))
            bracketed = upper < NO_UPPER_BOUND
            const = torch.where(bracketed, (lower + upper) / 2, const * 10)
        return best

    def _f(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return margin(logits, y).clamp_min(-self.confidence)
