"""Reading a ``report.json`` back: the facts a comparison needs, each field checked.

Reads every ``bastion.bench.report/1`` report, whether or not it has the ``*_ci`` fields
added with the intervals: counts come from the per-sample indices (``clean_correct_indices``,
``results[].robust_indices``), which every /1 report has, and a per-class count from its
``_ci.k`` where present, else from its accuracy and class size. A report is input a user
gives, so every field is checked and a bad one is a one-line UsageError naming it. (The
access layer reads the few fields an attestation needs on its own, in
``bastion.access.report_summary``: it may not import this package.) Imports no torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.errors import UsageError
from bastion.evaluation.intervals import Proportion
from bastion.evaluation.report_format import SCHEMA

MAX_REPORT_BYTES = 64 * 1024 * 1024
REPORT_FILE = "report.json"


@dataclass(frozen=True)
class ClassCounts:
    label: int
    robust: Proportion


@dataclass(frozen=True)
class Run:
    """What a comparison reads from one report."""

    source: str
    model: str
    suite: str
    norm: str
    attacks: tuple[str, ...]  # each attack with its parameters, canonical JSON: equal tuples = same attacks
    data_name: str
    data_sha256: str
    n: int
    clean: frozenset[int]                                  # correctly classified sample indices
    robust: dict[float, frozenset[int]]                    # eps -> robust sample indices
    per_class: dict[float, tuple[ClassCounts, ...]]        # eps -> per-class counts

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "model": self.model, "suite": self.suite, "norm": self.norm, "n": self.n,
                "data": {"name": self.data_name, "sha256": self.data_sha256}}


def read_run(path: str | Path) -> Run:
    """The comparable facts of one report (a report.json, or a run directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / REPORT_FILE
    source = str(p)
    if not p.is_file():
        raise UsageError(f"{source}: no such report (give a run directory of `bastion bench --out DIR` or its "
                         f"{REPORT_FILE})")
    try:
        if p.stat().st_size > MAX_REPORT_BYTES:
            raise UsageError(f"{source}: larger than {MAX_REPORT_BYTES // (1024 * 1024)} MiB; not a report")
        report = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: absurdly deep JSON
        raise UsageError(f"{source}: not a readable JSON report ({str(exc)[:120]})") from None
    return _Reader(source).run(report)


class _Reader:
    """Reads the fields a comparison needs, each checked, with one-line errors naming the field."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, problem: str):
        raise UsageError(f"{self.source}: {problem}")

    def run(self, report: Any) -> Run:
        if not isinstance(report, dict):
            self.fail("a report must be a JSON object")
        if report.get("schema") != SCHEMA:
            self.fail(f"not a `bastion bench` report (schema {str(report.get('schema'))[:60]!r}, expected {SCHEMA!r})")
        summary, data, suite = (self.table(report.get(k), k) for k in ("summary", "data", "suite"))
        n = self.count(summary.get("n"), "summary.n", positive=True)
        attacks = self.listing(suite.get("attacks"), "suite.attacks")
        results = self.listing(report.get("results"), "results")
        if not results:
            self.fail("'results' is empty")
        robust, per_class = {}, {}
        for i, result in enumerate(results):
            result = self.table(result, f"results[{i}]")
            eps = self.number(result.get("eps"), f"results[{i}].eps")
            robust[eps] = self.indices(result.get("robust_indices"), f"results[{i}].robust_indices", n)
            per_class[eps] = tuple(self.class_counts(entry, f"results[{i}].per_class[{j}]")
                                   for j, entry in enumerate(self.listing(result.get("per_class", []),
                                                                          f"results[{i}].per_class")))
        return Run(source=self.source, model=self.text(summary.get("model"), "summary.model"),
                   suite=self.text(summary.get("suite"), "summary.suite"),
                   norm=self.text(summary.get("norm"), "summary.norm"),
                   attacks=tuple(json.dumps(a, sort_keys=True) for a in attacks),
                   data_name=self.text(data.get("name"), "data.name"),
                   data_sha256=self.text(data.get("sha256"), "data.sha256"), n=n,
                   clean=self.indices(report.get("clean_correct_indices"), "clean_correct_indices", n),
                   robust=robust, per_class=per_class)

    def class_counts(self, entry: Any, where: str) -> ClassCounts:
        entry = self.table(entry, where)
        n = self.count(entry.get("n"), f"{where}.n", positive=True)
        return ClassCounts(self.count(entry.get("class"), f"{where}.class"),
                           self.proportion(entry, "robust_accuracy", n, where))

    def proportion(self, entry: dict, key: str, n: int, where: str) -> Proportion:
        """``k`` of ``n`` from ``key_ci.k`` where the report has it, else from the accuracy (earlier /1 reports)."""
        ci = entry.get(f"{key}_ci")
        if isinstance(ci, dict) and "k" in ci:
            k = self.count(ci["k"], f"{where}.{key}_ci.k")
        else:
            value = self.number(entry.get(key), f"{where}.{key}")
            k = round(value * n)
            if not math.isclose(k / n, value, abs_tol=0.5e-6):
                self.fail(f"'{where}.{key}' is {value!r}, which is no count of {n} samples")
        if k > n:
            self.fail(f"'{where}' counts {k} of {n} samples")
        return Proportion(k, n)

    def table(self, value: Any, where: str) -> dict:
        if not isinstance(value, dict):
            self.fail(f"'{where}' must be a JSON object")
        return value

    def listing(self, value: Any, where: str) -> list:
        if not isinstance(value, list):
            self.fail(f"'{where}' must be a list")
        return value

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(f"'{where}' must be a non-empty string")
        return value

    def number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            self.fail(f"'{where}' must be a finite, non-negative number")
        return float(value)

    def count(self, value: Any, where: str, positive: bool = False) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if positive else 0):
            self.fail(f"'{where}' must be a {'positive' if positive else 'non-negative'} integer")
        return value

    def indices(self, value: Any, where: str, n: int) -> frozenset[int]:
        values = self.listing(value, where)
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in values):
            self.fail(f"'{where}' must list sample indices from 0 to {n - 1}")
        found = frozenset(values)
        if len(found) != len(values):
            self.fail(f"'{where}' lists a sample twice")
        return found
