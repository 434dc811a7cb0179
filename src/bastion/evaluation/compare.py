"""Two benchmark reports side by side: what changed, per eps, per class and per sample, and whether B regressed.

:func:`compare_runs` reads two ``report.json`` files (or run directories holding one), of
any ``bastion.bench.report/1`` vintage (:mod:`~bastion.evaluation.report_reader`). It
refuses, with one line, two reports measured on different data (their data digests
differ: the same sample index would name different images) unless
``allow_different_data``, and two reports of different attacks (suite attacks and their
parameters) unless ``allow_different_suite``; reports of different norms never compare.

**The regression rule.** B regresses at an eps both reports measured, or in clean
accuracy, when its accuracy there is lower than A's by more than ``tolerance`` (a
fraction; 0 by default). On the same data with tolerance 0 that is: more samples broken
in B than in A. Samples broken in B but robust in A (and the reverse) are listed either
way, since the same accuracy can hide samples that changed places.

**Intervals** of each difference B - A are 95% MOVER intervals from the Clopper-Pearson
bounds (:mod:`~bastion.evaluation.intervals`): paired on the same data (the verdicts of
the two runs on one sample are correlated, which the paired form uses), independent on
different data. Per-class differences are always computed as independent (reports keep
no per-sample labels), which can only make them wider than a paired interval.

Imports no torch: comparing stored reports needs no model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.errors import UsageError
from bastion.evaluation.intervals import Interval, Proportion, independent_difference, paired_difference
from bastion.evaluation.junit import Case
from bastion.evaluation.report_format import fraction, interval_text, outward, percent, proportion_ci
from bastion.evaluation.report_reader import ClassCounts, Run, read_run

CLASSNAME = "bastion.bench.compare"
SHOWN_SAMPLES = 20  # per list in the text rendering; the JSON has them all
RULE = ("B regresses where its accuracy (clean, or robust at an eps both reports measured) is below A's by more "
        "than the tolerance")


@dataclass(frozen=True)
class Change:
    """One accuracy in A and in B: clean (``eps`` None) or robust at ``eps``."""

    eps: float | None
    a: Proportion
    b: Proportion
    interval: Interval                 # of b - a
    broken_in_b: tuple[int, ...] = ()  # right in A (robust, or correctly classified), wrong in B
    fixed_in_b: tuple[int, ...] = ()   # the reverse
    regressed: bool = False

    @property
    def what(self) -> str:
        return "clean accuracy" if self.eps is None else f"robust accuracy at eps {self.eps:g}"

    @property
    def difference(self) -> float:
        return self.b.value - self.a.value

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "eps": self.eps, "a": _accuracy(self.a), "b": _accuracy(self.b),
                "difference": fraction(self.difference), "difference_ci": outward(self.interval, -1.0, 1.0),
                "broken_in_b": list(self.broken_in_b), "fixed_in_b": list(self.fixed_in_b),
                "regressed": self.regressed}


@dataclass(frozen=True)
class ClassChange:
    label: int
    a: Proportion
    b: Proportion
    interval: Interval

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.label, "a": _accuracy(self.a), "b": _accuracy(self.b),
                "difference": fraction(self.b.value - self.a.value),
                "difference_ci": outward(self.interval, -1.0, 1.0)}


@dataclass(frozen=True)
class Comparison:
    a: Run
    b: Run
    same_data: bool
    same_suite: bool
    tolerance: float
    changes: tuple[Change, ...]                              # clean first, then each common eps ascending
    per_class: dict[float, tuple[ClassChange, ...]] = field(default_factory=dict)  # robust, per common eps
    only_in_a: tuple[float, ...] = ()
    only_in_b: tuple[float, ...] = ()

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regressed]

    def regression_lines(self) -> list[str]:
        return [f"{c.what} fell from {percent(c.a.value)} to {percent(c.b.value)} "
                f"({len(c.broken_in_b)} sample(s) broken in B that A got right, {len(c.fixed_in_b)} the reverse)"
                if self.same_data else f"{c.what} fell from {percent(c.a.value)} to {percent(c.b.value)}"
                for c in self.regressions]

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a.describe(), "b": self.b.describe(), "same_data": self.same_data,
                "same_suite": self.same_suite, "rule": RULE, "tolerance": self.tolerance,
                "intervals": "paired" if self.same_data else "independent",
                "changes": [c.to_dict() for c in self.changes],
                "per_class": [{"eps": eps, "classes": [c.to_dict() for c in classes]}
                              for eps, classes in self.per_class.items()],
                "only_in_a": list(self.only_in_a), "only_in_b": list(self.only_in_b),
                "regressed": bool(self.regressions), "regressions": self.regression_lines()}

    def cases(self) -> list[Case]:
        """One JUnit case per compared accuracy: failed where B regressed."""
        cases = []
        for change in self.changes:
            name = f"no regression in {change.what}"
            if change.regressed:
                message = (f"{change.what}: {percent(change.a.value)} in A, {percent(change.b.value)} in B "
                           f"(B - A {percent(change.difference, signed=True)}, 95% CI "
                           f"{interval_text(outward(change.interval, -1.0, 1.0), signed=True)}; tolerance "
                           f"{percent(self.tolerance)})")
                broken = f"\nbroken in B: {_samples(change.broken_in_b, None)}" if self.same_data else ""
                cases.append(Case(name, CLASSNAME, failure=message, failure_type="regression",
                                  details=message + broken))
            else:
                cases.append(Case(name, CLASSNAME, details=f"A {percent(change.a.value)}, B {percent(change.b.value)}"))
        return cases


def compare_runs(run_a: str | Path, run_b: str | Path, *, tolerance: float = 0.0, allow_different_data: bool = False,
                 allow_different_suite: bool = False) -> Comparison:
    """Compare the reports of two runs (directories holding report.json, or the files); see the module docstring."""
    if not (isinstance(tolerance, (int, float)) and 0.0 <= tolerance < 1.0):
        raise UsageError(f"tolerance must be a fraction in [0, 1), got {tolerance!r}")
    a, b = read_run(run_a), read_run(run_b)
    if a.norm != b.norm:
        raise UsageError(f"{a.source} measures the {a.norm} norm and {b.source} the {b.norm} norm: their eps are "
                         "not comparable")
    same_data = a.data_sha256 == b.data_sha256 and a.n == b.n
    if not same_data and not allow_different_data:
        raise UsageError(f"{a.source} and {b.source} were measured on different data ({a.data_name}, {a.n} samples, "
                         f"sha256 {a.data_sha256[:12]}... vs {b.data_name}, {b.n} samples, sha256 "
                         f"{b.data_sha256[:12]}...); pass --allow-different-data to compare their accuracies anyway")
    same_suite = a.attacks == b.attacks
    if not same_suite and not allow_different_suite:
        raise UsageError(f"{a.source} (suite {a.suite}) and {b.source} (suite {b.suite}) ran different attacks or "
                         "attack parameters; pass --allow-different-suite to compare them anyway")
    common = sorted(set(a.robust) & set(b.robust))
    if not common:
        raise UsageError(f"{a.source} and {b.source} share no eps (A: {_eps_list(a.robust)}; B: {_eps_list(b.robust)})")
    changes = [_change(None, a.clean, b.clean, a.n, b.n, same_data, tolerance)]
    changes += [_change(eps, a.robust[eps], b.robust[eps], a.n, b.n, same_data, tolerance) for eps in common]
    per_class = {eps: _class_changes(a.per_class.get(eps, ()), b.per_class.get(eps, ())) for eps in common}
    return Comparison(a, b, same_data, same_suite, float(tolerance), tuple(changes),
                      {eps: classes for eps, classes in per_class.items() if classes},
                      tuple(e for e in sorted(a.robust) if e not in b.robust),
                      tuple(e for e in sorted(b.robust) if e not in a.robust))


def _change(eps, in_a: frozenset[int], in_b: frozenset[int], n_a: int, n_b: int, paired: bool,
            tolerance: float) -> Change:
    a, b = Proportion(len(in_a), n_a), Proportion(len(in_b), n_b)
    # A drop counts only beyond the tolerance; the 1e-12 keeps float noise from deciding a tie.
    regressed = b.value < a.value - tolerance - 1e-12
    if not paired:
        return Change(eps, a, b, independent_difference(b, a), regressed=regressed)
    both = len(in_a & in_b)
    broken, fixed = tuple(sorted(in_a - in_b)), tuple(sorted(in_b - in_a))
    interval = paired_difference(both, len(fixed), len(broken), n_a - both - len(fixed) - len(broken))
    return Change(eps, a, b, interval, broken, fixed, regressed)


def _class_changes(in_a: tuple[ClassCounts, ...], in_b: tuple[ClassCounts, ...]) -> tuple[ClassChange, ...]:
    by_label = {c.label: c for c in in_b}
    return tuple(ClassChange(c.label, c.robust, by_label[c.label].robust,
                             independent_difference(by_label[c.label].robust, c.robust))
                 for c in in_a if c.label in by_label)


def render_comparison(comparison: Comparison) -> str:
    """The comparison for people: accuracies with intervals, changed samples, per-class table, verdict."""
    a, b = comparison.a, comparison.b
    lines = [f"A: {a.source}: {a.model}, suite {a.suite}, {a.n} samples of {a.data_name}",
             f"B: {b.source}: {b.model}, suite {b.suite}, {b.n} samples of {b.data_name}"]
    if comparison.same_data:
        lines.append(f"same data (sha256 {a.data_sha256[:12]}...): per-sample changes; paired intervals")
    else:
        lines.append("different data: accuracies only, independent intervals (no per-sample changes)")
    if not comparison.same_suite:
        lines.append("different attacks or attack parameters (compared as asked)")
    rows, notes = [], {}
    for change in comparison.changes:
        rows.append((change.what, _cell(change.a), _cell(change.b),
                     _difference(change.difference, change.interval) + ("  REGRESSION" if change.regressed else "")))
        if comparison.same_data and (change.broken_in_b or change.fixed_in_b):
            notes[len(rows) - 1] = [
                f"    broken in B, right in A ({len(change.broken_in_b)}): {_samples(change.broken_in_b, SHOWN_SAMPLES)}",
                f"    right in B, broken in A ({len(change.fixed_in_b)}): {_samples(change.fixed_in_b, SHOWN_SAMPLES)}"]
    lines += [""] + _table(("", "A (k/n, 95% CI)", "B (k/n, 95% CI)", "B - A (95% CI)"), rows, notes)
    for name, only in (("A", comparison.only_in_a), ("B", comparison.only_in_b)):
        if only:
            lines.append(f"  only {name} measured eps {', '.join(f'{e:g}' for e in only)} (not compared)")
    if comparison.per_class:
        eps, classes = max(comparison.per_class.items())
        lines += ["", f"Per class, robust accuracy at eps {eps:g} (independent intervals):"]
        lines += _table(("class", "A", "B", "B - A (95% CI)"),
                        [(str(c.label), _cell(c.a), _cell(c.b), _difference(c.b.value - c.a.value, c.interval))
                         for c in classes])
    lines.append("")
    tolerance = f"tolerance {percent(comparison.tolerance)}"
    if comparison.regressions:
        lines += [f"REGRESSION ({tolerance}): {line}" for line in comparison.regression_lines()]
    else:
        lines.append(f"no regression: B is nowhere below A by more than the {tolerance}")
    return "\n".join(lines)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], notes: dict[int, list[str]] | None = None) -> list[str]:
    """Left-aligned columns as wide as their widest cell; ``notes[i]`` are lines printed under row ``i``."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for i, row in enumerate((header, *rows)):
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        lines += (notes or {}).get(i - 1, [])
    return lines


def _cell(p: Proportion) -> str:
    return f"{percent(p.value)} {p.k}/{p.n} {interval_text(proportion_ci(p))}"


def _difference(value: float, interval: Interval) -> str:
    return f"{percent(value, signed=True)} {interval_text(outward(interval, -1.0, 1.0), signed=True)}"


def _samples(indices: tuple[int, ...], most: int | None) -> str:
    if not indices:
        return "none"
    shown = indices if most is None else indices[:most]
    more = f" ... and {len(indices) - len(shown)} more" if len(shown) < len(indices) else ""
    return ", ".join(str(i) for i in shown) + more


def _accuracy(p: Proportion) -> dict[str, Any]:
    return {"value": fraction(p.value), **proportion_ci(p)}


def _eps_list(results: dict[float, Any]) -> str:
    return ", ".join(f"{e:g}" for e in sorted(results)) or "none"
