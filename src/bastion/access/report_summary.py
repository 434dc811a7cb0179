"""Read a robustness report by its schema and keep what an attestation needs, in one fixed shape.

Two report shapes are read, each explicitly, and anything else is refused:

- ``bastion bench`` writes ``report.json`` with ``"schema": "bastion.bench.report/1"``
  (see ``bastion.evaluation.report``): the headline numbers under ``summary`` (``n``,
  ``clean_accuracy``, ``suite``, ``norm``, ``indicators_fired``), one entry per eps under
  ``results`` (``eps``, ``robust_accuracy``);
- ``bastion attack --json`` prints ``attack``, ``n``, ``norm``, ``clean_accuracy`` and
  ``results`` (``eps``, ``robust_accuracy``), with no schema field.

The summary an attestation signs (its predicate's ``evaluation``) has one shape,
checked field by field here too when an attestation is verified:

    {"suite": str | None, "threat_models": [{"norm": str, "eps": [float, ...]}, ...], "n": int,
     "clean_accuracy": float, "robust_accuracy": [{"label": str, "eps": float | None, "accuracy": float}, ...],
     "flags": [str, ...]}        # the attack-failure indicators that fired

Every field is checked by type and range (``n`` a positive integer below
:data:`MAX_SAMPLES`, accuracies finite in [0, 1], eps finite and non-negative, flags a
short list of short names), so a hostile report gives a one-line error and never an
overflow further on.
"""

from __future__ import annotations

import math
from typing import Any

BENCH_SCHEMA = "bastion.bench.report/1"
MAX_SAMPLES = 10**9
MAX_ENTRIES = 1000
MAX_FLAGS = 100
MAX_NAME_CHARS = 200
EXPECTED = (f"expected a `bastion bench` report.json (schema {BENCH_SCHEMA!r}) or the output of "
            "`bastion attack --json` (keys attack, n, norm, clean_accuracy, results)")
SUMMARY_KEYS = ("suite", "threat_models", "n", "clean_accuracy", "robust_accuracy", "flags")


def summarise_report(report: Any, source: str, error: type[Exception]) -> dict[str, Any]:
    """The fixed-shape summary of a bench report or attack summary; raises ``error`` naming the bad field."""
    if not isinstance(report, dict):
        raise error(f"{source}: a report must be a JSON object; {EXPECTED}")
    check = _Checker(source, error)
    if "schema" in report:
        if report["schema"] != BENCH_SCHEMA:
            raise error(f"{source}: unknown report schema {str(report['schema'])[:80]!r}; {EXPECTED}")
        return _bench_summary(report, check)
    if "attack" in report:
        return _attack_summary(report, check)
    raise error(f"{source}: not a report bastion knows (no 'schema' and no 'attack' key); {EXPECTED}")


def check_summary(evaluation: Any, source: str, error: type[Exception]) -> dict[str, Any]:
    """An attested ``evaluation`` (the shape above), checked field by field; raises ``error`` if it is not one."""
    check = _Checker(source, error)
    table = check.table(evaluation, "evaluation")
    missing = [key for key in SUMMARY_KEYS if key not in table]
    extra = sorted(set(table) - set(SUMMARY_KEYS))
    if missing or extra:
        problem = f"lacks {', '.join(missing)}" if missing else f"has unknown field(s) {', '.join(extra)}"
        raise error(f"{source}: not an attested evaluation summary: it {problem}")
    suite = table["suite"]
    if suite is not None:
        suite = check.name(suite, "suite")
    threats = check.listing(table["threat_models"], "threat_models", MAX_ENTRIES)
    entries = check.listing(table["robust_accuracy"], "robust_accuracy", MAX_ENTRIES)
    if not entries:
        raise error(f"{source}: 'robust_accuracy' holds no accuracy values")
    robust = []
    for i, entry in enumerate(entries):
        where = f"robust_accuracy[{i}]"
        entry = check.table(entry, where)
        eps = entry.get("eps")
        robust.append({"label": check.name(entry.get("label", ""), f"{where}.label", empty_ok=True),
                       "eps": None if eps is None else check.eps(eps, f"{where}.eps"),
                       "accuracy": check.fraction(entry.get("accuracy"), f"{where}.accuracy")})
    return {"suite": suite, "threat_models": [_threat(check, t, f"threat_models[{i}]") for i, t in enumerate(threats)],
            "n": check.count(table["n"], "n"), "clean_accuracy": check.fraction(table["clean_accuracy"],
                                                                               "clean_accuracy"),
            "robust_accuracy": robust, "flags": check.flags(table["flags"], "flags")}


def _bench_summary(report: dict[str, Any], check: _Checker) -> dict[str, Any]:
    summary = check.table(report.get("summary"), "summary")
    norm = check.name(summary.get("norm"), "summary.norm")
    robust = _per_eps(report.get("results"), "results", norm, check)
    return {
        "suite": check.name(summary.get("suite"), "summary.suite"),
        "threat_models": [{"norm": norm, "eps": sorted({e["eps"] for e in robust})}],
        "n": check.count(summary.get("n"), "summary.n"),
        "clean_accuracy": check.fraction(summary.get("clean_accuracy"), "summary.clean_accuracy"),
        "robust_accuracy": robust,
        "flags": check.flags(summary.get("indicators_fired"), "summary.indicators_fired"),
    }


def _attack_summary(report: dict[str, Any], check: _Checker) -> dict[str, Any]:
    check.name(report["attack"], "attack")
    norm = check.name(report.get("norm"), "norm")
    robust = _per_eps(report.get("results"), "results", norm, check)
    return {
        "suite": None,
        "threat_models": [{"norm": norm, "eps": sorted({e["eps"] for e in robust})}],
        "n": check.count(report.get("n"), "n"),
        "clean_accuracy": check.fraction(report.get("clean_accuracy"), "clean_accuracy"),
        "robust_accuracy": robust,
        "flags": [],
    }


def _per_eps(results: Any, where: str, norm: str, check: _Checker) -> list[dict[str, Any]]:
    if results is None:
        check.fail(f"needs 'robust_accuracy' values: '{where}' must list {{eps, robust_accuracy}} entries, one per eps")
    entries = check.listing(results, where, MAX_ENTRIES)
    if not entries:
        check.fail(f"'{where}' holds no robust accuracy values")
    robust = []
    for i, entry in enumerate(entries):
        entry = check.table(entry, f"{where}[{i}]")
        robust.append({"label": norm, "eps": check.eps(entry.get("eps"), f"{where}[{i}].eps"),
                       "accuracy": check.fraction(entry.get("robust_accuracy"), f"{where}[{i}].robust_accuracy")})
    return robust


def _threat(check: _Checker, threat: Any, where: str) -> dict[str, Any]:
    table = check.table(threat, where)
    eps = check.listing(table.get("eps", []), f"{where}.eps", MAX_ENTRIES)
    return {"norm": check.name(table.get("norm"), f"{where}.norm"), "eps": [check.eps(e, f"{where}.eps") for e in eps]}


class _Checker:
    """Type and range checks that raise ``error`` with ``source`` and the field's name."""

    def __init__(self, source: str, error: type[Exception]):
        self.source, self.error = source, error

    def fail(self, problem: str):
        raise self.error(f"{self.source}: {problem}")

    def table(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(f"'{where}' must be a JSON object, got {_kind(value)}")
        return value

    def listing(self, value: Any, where: str, most: int) -> list[Any]:
        if not isinstance(value, list):
            self.fail(f"'{where}' must be a list, got {_kind(value)}")
        if len(value) > most:
            self.fail(f"'{where}' has {len(value)} entries; at most {most} are read")
        return value

    def count(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < MAX_SAMPLES:
            self.fail(f"needs the sample count as a positive integer '{where}' below {MAX_SAMPLES:,} "
                      f"(got {_shown(value)})")
        return value

    def fraction(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            if value is None:
                self.fail(f"needs '{where.rsplit('.', 1)[-1]}' as a number between 0 and 1 (field '{where}')")
            self.fail(f"'{where}' holds {_shown(value)}, not a number between 0 and 1")
        if not 0.0 <= value <= 1.0:
            self.fail(f"'{where.rsplit('.', 1)[-1]}' must be a fraction between 0 and 1, got {value:g}")
        return float(value)

    def eps(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            self.fail(f"'{where}' must be a finite, non-negative number (got {_shown(value)})")
        return float(value)

    def name(self, value: Any, where: str, *, empty_ok: bool = False) -> str:
        if not isinstance(value, str) or len(value) > MAX_NAME_CHARS or not (value or empty_ok):
            self.fail(f"'{where}' must be a {'' if empty_ok else 'non-empty '}string of at most {MAX_NAME_CHARS} "
                      f"characters (got {_shown(value)})")
        return value

    def flags(self, value: Any, where: str) -> list[str]:
        names = self.listing(value, where, MAX_FLAGS)
        return sorted({self.name(flag, f"{where}[{i}]") for i, flag in enumerate(names)})


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _shown(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**18:
        return f"an integer of about {int(abs(value).bit_length() * 0.30103) + 1} digits"  # no str(): it may be huge
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
