"""Confidence intervals: Clopper-Pearson against known values, MOVER differences at their nominal coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta

from bastion.evaluation.intervals import (Proportion, clopper_pearson, independent_difference, paired_difference,
                                          selected_gap)
from bastion.evaluation.report_format import fraction, outward, proportion_ci, seconds, significant


@pytest.mark.parametrize("k, n, low, high", [
    # 0 and n successes have closed forms: the bound is (alpha/2)^(1/n) away from the edge.
    (0, 10, 0.0, 1 - 0.025 ** (1 / 10)),        # 0.308497
    (10, 10, 0.025 ** (1 / 10), 1.0),            # 0.691503
    (5, 10, 0.187086, 0.812914),                 # the classic table value, symmetric about 0.5
    (98, 100, 0.929616, 0.997569),
    (17, 20, 0.621073, 0.967929),
])
def test_clopper_pearson_matches_known_values(k, n, low, high):
    got = clopper_pearson(k, n)
    assert got == pytest.approx((low, high), abs=1e-6)
    expected = (beta.ppf(0.025, k, n - k + 1) if k else 0.0, beta.ppf(0.975, k + 1, n - k) if k < n else 1.0)
    assert got == pytest.approx(expected, abs=1e-12)


def test_clopper_pearson_edges_and_bad_counts():
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)
    with pytest.raises(ValueError):
        Proportion(-1, 5)
    assert clopper_pearson(3, 40, level=0.99)[1] > clopper_pearson(3, 40)[1]


def test_clopper_pearson_covers_at_least_the_nominal_rate():
    rng = np.random.default_rng(0)
    for p, n in ((0.3, 50), (0.95, 40), (0.02, 100)):
        ks = rng.binomial(n, p, size=2000)
        covered = np.mean([lo <= p <= hi for lo, hi in (clopper_pearson(int(k), n) for k in ks)])
        assert 0.95 - 0.012 <= covered <= 0.999, (p, n, covered)  # exact: at least 95% up to simulation noise


@pytest.mark.parametrize("p1, n1, p2, n2", [(0.9, 40, 0.6, 35), (0.98, 50, 0.5, 12), (0.3, 25, 0.3, 30)])
def test_gap_interval_covers_the_true_difference_at_about_the_nominal_rate(p1, n1, p2, n2):
    rng = np.random.default_rng(1)
    truth, trials = p1 - p2, 1000
    hits = 0
    for k1, k2 in zip(rng.binomial(n1, p1, trials), rng.binomial(n2, p2, trials)):
        low, high = selected_gap(Proportion(int(k1), n1), Proportion(int(k2), n2))
        hits += low <= truth <= high
    # Built from exact (conservative) bounds: close to 95%, on the safe side, never far above.
    assert 0.935 <= hits / trials <= 0.995, hits / trials


@pytest.mark.parametrize("pa, pb, agreement, n", [(0.85, 0.8, 0.9, 100), (0.5, 0.5, 0.6, 60), (0.95, 0.7, 0.7, 80)])
def test_paired_interval_covers_the_true_difference(pa, pb, agreement, n):
    """Two correlated verdicts per sample: a latent draw decides both, so they agree more than by chance."""
    rng = np.random.default_rng(2)
    hits, trials = 0, 1000
    for _ in range(trials):
        shared = rng.random(n)
        own = rng.random(n)
        a = shared < pa
        b = np.where(rng.random(n) < agreement, shared < pb, own < pb)
        both, a_only, b_only = int(np.sum(a & b)), int(np.sum(a & ~b)), int(np.sum(~a & b))
        low, high = paired_difference(both, b_only, a_only, n - both - a_only - b_only)  # B - A
        hits += low <= pb - pa <= high
    assert 0.935 <= hits / trials <= 0.995, hits / trials


def test_paired_interval_uses_the_pairing():
    # Same 17 of 20 robust in both runs: far better determined than two independent measurements.
    paired = paired_difference(17, 0, 0, 3)
    independent = independent_difference(Proportion(17, 20), Proportion(17, 20))
    assert paired[0] < 0 < paired[1]
    assert paired[1] - paired[0] < 0.5 * (independent[1] - independent[0])
    # Every sample flipped from robust to broken: the difference is clearly negative.
    low, high = paired_difference(0, 0, 17, 3)  # first = B (robust on none), second = A (17 robust)
    assert -1.0 <= low < high < 0


def test_differences_stay_within_minus_one_and_one():
    # 5/5 against 0/5: both bounds are 0.025^(1/5) from their estimates, so the lower end is 1 - sqrt(2) * that.
    low = 1 - math.sqrt(2) * (1 - 0.025 ** (1 / 5))
    assert independent_difference(Proportion(5, 5), Proportion(0, 5)) == pytest.approx((low, 1.0), abs=1e-12)
    assert independent_difference(Proportion(0, 1), Proportion(1, 1))[0] >= -1.0


def test_report_numbers_are_rounded_to_their_precision():
    assert fraction(0.9800000190734863) == 0.98
    assert seconds(2.3374750250000034) == 2.34
    assert significant(0.049997302889823916) == 0.0499973
    assert significant(-5.628250598907471) == -5.62825
    # Interval bounds round outward, so the written interval contains the exact one.
    assert outward((0.1234564, 0.1234566)) == {"low": 0.123456, "high": 0.123457}
    assert outward((0.1234566, 0.1234564 + 0.3)) == {"low": 0.123456, "high": 0.423457}
    assert outward((-1.2, 1.5), -1.0, 1.0) == {"low": -1.0, "high": 1.0}
    ci = proportion_ci(Proportion(17, 20))
    assert ci == {"k": 17, "n": 20, "low": 0.621073, "high": 0.96793}
    exact = clopper_pearson(17, 20)
    assert ci["low"] <= exact[0] and ci["high"] >= exact[1]
