"""APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), Algorithm 1.

Projected gradient ascent with momentum 0.75 whose step size starts at 2*eps and is
halved at checkpoints w_j when the search stalls:

* condition 1: the loss rose in fewer than rho * (w_j - w_{j-1}) of the steps since the
  last checkpoint;
* condition 2: the step size was not halved at the last checkpoint and the best loss
  has not improved since then.

After a halving the iterate restarts from the best point found so far. Checkpoints
sit at p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (fractions
of the budget). Samples leave the working batch as soon as they are misclassified.

:func:`apgd` is the optimiser; APGD-CE and APGD-DLR pick its untargeted loss, APGD-T
(apgd_t.py) runs it with a targeted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch

from bastion.attacks.base import Attack, ce_loss, dlr_loss
from bastion.attacks.params import MAX_RESTARTS, MAX_STEPS, Params, integer, number
from bastion.attacks.registry import register
from bastion.attacks.toolbox import ascent_step, per_sample

#: loss(logits, y, target) -> per-sample loss to maximise; target is None for untargeted losses.
Loss = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

MOMENTUM = 0.75


def checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD decides whether to halve the step size."""
    points, p_prev, p = [], 0.0, 0.22
    while math.ceil(round(p * steps, 9)) < steps:  # round: 0.22 * 100 is 22.000000000000004
        points.append(math.ceil(round(p * steps, 9)))
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return sorted(set(points) - {0})


def apgd(attack: Attack, model, x: torch.Tensor, y: torch.Tensor, eps: float, loss_fn: Loss, *,
         steps: int, rho: float, target: torch.Tensor | None = None,
         siblings: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run from a random start, on every row of ``x``.

    Returns the points (the first misclassified iterate of each row, else its point of
    highest loss), a bool mask of the rows that were misclassified, and the loss at each
    returned point. ``siblings`` (one id per row) groups rows that attack the same sample (one row
    per target class): once one of them is misclassified the others stop too, their
    point and loss as they were then.
    """
    project = attack.threat.project
    out, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    best_loss = torch.full((len(x),), float("-inf"), device=x.device)
    done = _Done(out, fooled, best_loss, y, siblings)

    def loss_of(rows):  # the loss of the working batch, whose rows of x are ``rows``
        return lambda logits, labels: loss_fn(logits, labels, None if target is None else target[rows])

    rows = torch.arange(len(x), device=x.device)
    x_adv = attack.random_point(x, eps)
    loss, grad, logits = attack.loss_and_grad(model, x_adv, y, loss_of(rows))
    s = {  # per-sample state of the working batch; every entry is subset together
        "rows": rows, "x_adv": x_adv, "x_prev": x_adv, "grad": grad, "loss": loss,
        "x_best": x_adv, "grad_best": grad, "loss_best": loss,
        "eta": torch.full((len(x),), 2.0 * eps, device=x.device),
        "increases": torch.zeros(len(x), device=x.device),
        "loss_best_at_check": loss, "halved_at_check": torch.ones(len(x), dtype=torch.bool, device=x.device),
    }
    s = done.drop(s, logits)
    marks, last_mark = checkpoints(steps), 0
    for k in range(1, steps + 1):
        if len(s["rows"]) == 0:
            break
        x0, a = x[s["rows"]], (MOMENTUM if k > 1 else 1.0)
        z = ascent_step(attack.threat, x0, s["x_adv"], s["grad"], s["eta"], eps)
        x_new = project(x0, s["x_adv"] + a * (z - s["x_adv"]) + (1 - a) * (s["x_adv"] - s["x_prev"]), eps)
        s["x_prev"], s["x_adv"] = s["x_adv"], x_new
        if k == steps:  # the last iterate needs a prediction and a loss, not a gradient
            logits = attack.logits(model, x_new)
            loss, grad = loss_of(s["rows"])(logits, y[s["rows"]]), s["grad"]
        else:
            loss, grad, logits = attack.loss_and_grad(model, x_new, y[s["rows"]], loss_of(s["rows"]))
        attack.log_loss(k - 1, loss)
        s["increases"] += (loss > s["loss"]).float()
        s["loss"], s["grad"] = loss, grad
        better = loss > s["loss_best"]
        s["x_best"] = torch.where(per_sample(better, x_new), x_new, s["x_best"])
        s["grad_best"] = torch.where(per_sample(better, grad), grad, s["grad_best"])
        s["loss_best"] = torch.where(better, loss, s["loss_best"])
        s = done.drop(s, logits)  # logits belong to s["x_adv"] until the checkpoint below
        if marks and k == marks[0]:
            few_increases = s["increases"] < rho * (k - last_mark)
            stalled = ~s["halved_at_check"] & (s["loss_best"] <= s["loss_best_at_check"])
            halve = few_increases | stalled
            s["eta"] = torch.where(halve, s["eta"] / 2, s["eta"])
            s["x_adv"] = torch.where(per_sample(halve, x0), s["x_best"], s["x_adv"])
            s["grad"] = torch.where(per_sample(halve, x0), s["grad_best"], s["grad"])
            s["loss"] = torch.where(halve, s["loss_best"], s["loss"])
            s["halved_at_check"], s["loss_best_at_check"] = halve, s["loss_best"]
            s["increases"] = torch.zeros_like(s["increases"])
            last_mark = marks.pop(0)
    out[s["rows"]], best_loss[s["rows"]] = s["x_best"], s["loss_best"]
    return out, fooled, best_loss


class _Done:
    """Where :func:`apgd` puts the rows that leave its working batch."""

    def __init__(self, out, fooled, best_loss, y, siblings) -> None:
        self.out, self.fooled, self.best_loss, self.y, self.siblings = out, fooled, best_loss, y, siblings
        self.samples = int(siblings.max()) + 1 if siblings is not None and len(siblings) else 0

    def drop(self, s: dict, logits: torch.Tensor) -> dict:
        """Write misclassified iterates to ``out``, mark them, and remove them (and their siblings)
        from the working batch."""
        now_fooled = logits.argmax(1) != self.y[s["rows"]]
        if not now_fooled.any():
            return s
        rows = s["rows"]
        self.out[rows[now_fooled]], self.best_loss[rows[now_fooled]] = s["x_adv"][now_fooled], s["loss"][now_fooled]
        self.fooled[rows[now_fooled]] = True
        leave = now_fooled
        if self.siblings is not None:
            owner = self.siblings[rows]
            finished = torch.zeros(self.samples, dtype=torch.bool, device=rows.device)
            finished[owner[now_fooled]] = True
            leave = finished[owner]
            stopped = leave & ~now_fooled
            self.out[rows[stopped]], self.best_loss[rows[stopped]] = s["x_best"][stopped], s["loss_best"][stopped]
        keep = ~leave
        return {name: value[keep] for name, value in s.items()}


APGD_PARAMS = Params(
    integer("steps", 100, 1, MAX_STEPS),
    integer("restarts", 1, 1, MAX_RESTARTS),
    number("rho", 0.75, 0, 1, low_open=True, help="share of steps that must raise the loss"),
)


class UntargetedAPGD(Attack):
    """APGD with an untargeted loss, restarted on the samples that survive; subclasses name the loss."""

    PARAMS = APGD_PARAMS
    #: The per-sample loss to maximise, ``loss(logits, y)``; each subclass names one.
    loss: ClassVar[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]

    def attack_batch(self, model, x, y, eps):
        objective = lambda logits, labels, target: self.loss(logits, labels)  # noqa: E731
        best = x.clone()
        alive = torch.arange(len(x), device=x.device)
        for _ in range(self.restarts):
            found, fooled, _ = apgd(self, model, x[alive], y[alive], eps, objective, steps=self.steps, rho=self.rho)
            best[alive] = found
            alive = alive[~fooled]
            if len(alive) == 0:
                break
        return best


@register
class APGDCE(UntargetedAPGD):
    name = "apgd-ce"
    loss = staticmethod(ce_loss)


@register
class APGDDLR(UntargetedAPGD):
    name = "apgd-dlr"
    loss = staticmethod(dlr_loss)
