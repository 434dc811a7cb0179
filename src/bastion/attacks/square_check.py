"""A cheap black-box check that escalates to the full Square attack on evidence.

Square (Andriushchenko et al. 2020, square.py) stays in AutoAttack because a score-based
attack does not need the model's gradients: when it breaks samples the gradient attacks
could not, the gradients are masked (Carlini et al. 2019; Croce & Hein 2020). Most of its
5,000 queries per sample are spent confirming that a sound robust model is robust. This
check runs the first ``check_queries`` iterations of the same search (the schedule of the
full ``n_queries`` budget, so its first squares are the large, coarse ones that break
masked models), then continues to ``n_queries`` only where that can change the result:

* every sample of the batch, when the check broke more than ``escalate_share`` of it (the
  black-box indicator's tolerance, 0.5%): a pattern, as masked gradients give;
* otherwise the samples whose margin ``z_y - max_{k != y} z_k`` after the check is at most
  ``margin_threshold`` of their clean margin: the search is making headway on them;
* every sample, from the start, when the benchmark's gradient probe found the gradients
  unusable (:meth:`for_masked_gradients`): that is the evidence, found before the check ran.

An escalated sample follows exactly the full Square attack's search; the others stop
after ``check_queries``.
"""

from __future__ import annotations

from bastion.attacks.params import MAX_QUERIES, Params, integer, number
from bastion.attacks.registry import register
from bastion.attacks.square import Square
from bastion.attacks.toolbox import margin


@register
class SquareCheck(Square):
    name = "square-check"
    PARAMS = Square.PARAMS + Params(
        integer("check_queries", 500, 1, MAX_QUERIES, help="queries per sample before deciding to escalate"),
        number("escalate_share", 0.005, 0, 1, help="share of the batch the check may break before all escalate"),
        number("margin_threshold", 0.3, 0, 1, help="share of the clean margin left that escalates a sample"),
    )

    def for_masked_gradients(self) -> SquareCheck:
        """The full search for every sample: the check's budget raised to ``n_queries``."""
        return type(self)(self.threat, batch_size=self.batch_size, seed=self.seed,
                          **{**self.settings, "check_queries": self.n_queries})

    def attack_batch(self, model, x, y, eps):
        search = self.start(model, x, y, eps)
        check = min(self.check_queries, self.n_queries)
        self.search(model, search, 1, check)
        if check < self.n_queries and len(search.rows):
            broken = len(x) - len(search.rows)
            if broken <= self.escalate_share * len(x):
                clean_margin = margin(self.logits(model, x[search.rows]), y[search.rows])
                search.set_aside(search.margin <= self.margin_threshold * clean_margin)
            self.search(model, search, check, self.n_queries)
        return search.finish()
