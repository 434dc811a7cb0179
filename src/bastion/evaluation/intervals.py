"""Confidence intervals for accuracies and for differences of accuracies.

An accuracy measured on ``n`` samples is a binomial proportion ``k / n``. Its interval is
Clopper-Pearson's exact one (Clopper & Pearson 1934): the set of true accuracies under
which the observed ``k`` is not in either 2.5% tail, so its coverage is at least 95%
whatever ``n`` and the true accuracy (it errs on the wide side; the normal
approximation's ``p ± 1.96 sqrt(p(1-p)/n)`` collapses to a point at 0 and 100%, exactly
where robust accuracies often are).

A difference of two accuracies gets a MOVER interval (the method of variance estimates
recovery: Newcombe 1998, "Interval estimation for the difference between independent
proportions", method 10, and Zou & Donner 2008), built from the two Clopper-Pearson
intervals: the distance from each estimate to its own bound is combined by square and
add. Two forms:

- :func:`independent_difference`, for accuracies on disjoint samples (two classes, or
  two runs on different data);
- :func:`paired_difference`, for two verdicts on the *same* samples (two runs on the
  same data), which corrects the square-and-add by the correlation of the verdicts
  (Newcombe 1998, "Improved confidence intervals for the difference between binomial
  proportions based on paired data", method 10): positively correlated verdicts make
  the difference far better determined than two independent measurements would.

scipy's ``betaincinv`` (the inverse regularized incomplete beta function, which
``scipy.stats.beta.ppf`` also computes) gives the exact bounds; scipy.special is imported
on first use and never imports torch, so reading reports stays light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEVEL = 0.95
METHODS = {"level": LEVEL,
           "proportion": "Clopper-Pearson (exact binomial)",
           "difference": "MOVER square-and-add from the Clopper-Pearson bounds (Newcombe 1998, method 10)"}

Interval = tuple[float, float]


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> Interval:
    """The exact two-sided ``level`` interval for a proportion observed as ``k`` of ``n``."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    from scipy.special import betaincinv  # scipy is heavy: only when an interval is asked for

    tail = (1.0 - level) / 2
    low = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, tail))
    high = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1.0 - tail))
    return (low, high)


@dataclass(frozen=True)
class Proportion:
    """``k`` of ``n`` samples: an accuracy with its exact count."""

    k: int
    n: int

    def __post_init__(self) -> None:
        if not 0 <= self.k <= self.n:
            raise ValueError(f"need 0 <= k <= n, got {self.k} of {self.n}")

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else 0.0

    def interval(self, level: float = LEVEL) -> Interval:
        return clopper_pearson(self.k, self.n, level)


def independent_difference(first: Proportion, second: Proportion, level: float = LEVEL) -> Interval:
    """Interval for ``first.value - second.value`` when the two are measured on disjoint samples."""
    p1, p2 = first.value, second.value
    (l1, u1), (l2, u2) = first.interval(level), second.interval(level)
    d = p1 - p2
    return (max(-1.0, d - math.hypot(p1 - l1, u2 - p2)), min(1.0, d + math.hypot(u1 - p1, p2 - l2)))


def paired_difference(both: int, first_only: int, second_only: int, neither: int, level: float = LEVEL) -> Interval:
    """Interval for ``p1 - p2`` from two verdicts on the same samples.

    ``both`` samples pass both, ``first_only`` pass the first only, ``second_only`` the second
    only, ``neither`` fail both; ``p1 = (both + first_only) / n`` and ``p2 = (both + second_only) / n``.
    """
    n = both + first_only + second_only + neither
    first, second = Proportion(both + first_only, n), Proportion(both + second_only, n)
    p1, p2 = first.value, second.value
    (l1, u1), (l2, u2) = first.interval(level), second.interval(level)
    margins = (both + first_only) * (second_only + neither) * (both + second_only) * (first_only + neither)
    phi = (both * neither - first_only * second_only) / math.sqrt(margins) if margins else 0.0
    d = p1 - p2
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return (max(-1.0, d - below), min(1.0, d + above))


def selected_gap(best: Proportion, worst: Proportion, level: float = LEVEL) -> Interval:
    """Interval for the gap between the best and the worst class's accuracy.

    The square-and-add interval of two independent proportions. The best and worst class
    are chosen *after* looking at the data, and the interval does not account for that
    choice: with many classes the observed extremes are biased apart, so this interval is
    optimistic about the selection (it covers the gap between those two classes' true
    accuracies, not the true best-worst gap over all classes).
    """
    return independent_difference(best, worst, level)
