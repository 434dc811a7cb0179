"""The report format's name and how reports write numbers: to the precision they carry, with intervals.

Torch-free, so that readers of reports (:mod:`~bastion.evaluation.compare`) stay light.

A measured float is written no finer than it is known: fractions (accuracies, interval
bounds) to 6 decimals, seconds to 0.01 s, anything else measured (loss traces, indicator
statistics) to 6 significant digits, so a report reads ``0.98``, never
``0.9800000190734863``. Configuration (eps, attack parameters) is written as given.
Interval bounds are rounded outward, so the rounded interval still contains the exact one.
"""

from __future__ import annotations

import math
from typing import Any

from bastion.evaluation.intervals import Interval, Proportion

#: The schema of ``report.json`` (built by :mod:`~bastion.evaluation.report`).
SCHEMA = "bastion.bench.report/1"
DECIMALS = 6
STEP = 10.0 ** -DECIMALS
SIGNIFICANT = 6


def fraction(value: float) -> float:
    return round(float(value), DECIMALS)


def seconds(value: float) -> float:
    return round(float(value), 2)


def significant(value: float) -> float:
    value = float(value)
    return float(f"{value:.{SIGNIFICANT}g}") if math.isfinite(value) else value


def measured(value: Any) -> Any:
    """``value`` with every float in it (through dicts and lists) to :data:`SIGNIFICANT` digits."""
    if isinstance(value, float):
        return significant(value)
    if isinstance(value, dict):
        return {k: measured(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [measured(v) for v in value]
    return value


def outward(interval: Interval, lowest: float = 0.0, highest: float = 1.0) -> dict[str, float]:
    """``{"low", "high"}`` rounded to :data:`DECIMALS` away from the estimate, kept in [lowest, highest]."""
    low, high = interval
    low_r, high_r = fraction(low), fraction(high)
    if low_r > low:
        low_r = fraction(low_r - STEP)
    if high_r < high:
        high_r = fraction(high_r + STEP)
    return {"low": max(lowest, low_r), "high": min(highest, high_r)}


def proportion_ci(p: Proportion) -> dict[str, Any]:
    """What a report stores beside an accuracy: its exact count and its 95% interval."""
    return {"k": p.k, "n": p.n, **outward(p.interval())}


# ---- text ---------------------------------------------------------------------------------
def percent(value: float, signed: bool = False) -> str:
    return f"{100 * value:+.2f}%" if signed else f"{100 * value:.2f}%"


def interval_text(ci: dict[str, float], signed: bool = False) -> str:
    """``[62.11, 96.79]%``: an interval in percent points (signed for differences)."""
    form = "+.2f" if signed else ".2f"
    return f"[{100 * ci['low']:{form}}, {100 * ci['high']:{form}}]%"


def accuracy_text(value: float, ci: dict[str, Any] | None) -> str:
    """``85.00% (17/20, 95% CI [62.11, 96.79]%)``; just the percentage where a report has no interval."""
    if not ci:
        return percent(value)
    count = f"{ci['k']}/{ci['n']}, " if "k" in ci else ""
    return f"{percent(value)} ({count}95% CI {interval_text(ci)})"
