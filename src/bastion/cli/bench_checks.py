"""What `bastion bench` checks besides running: the --require gate, JUnit XML, and --compare.

The gate reuses the requirement language of `bastion verify --require`
(:mod:`bastion.access.requirements`) on the summary an attestation of the same report
would carry (:func:`bastion.access.report_summary.summarise_report`), so a CI gate and a
gateway policy read one requirement the same way. Imports no torch: ``--compare`` needs
no model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from bastion.access.report_summary import summarise_report
from bastion.access.requirements import Clause, Outcome, evaluate_requirement, parse_requirement
from bastion.cli.common import emit_json
from bastion.errors import CheckFailed, UsageError
from bastion.evaluation.junit import Case, indicator_cases, write_junit

#: Parameters of `bastion bench` that configure a run, and those that configure --compare.
RUN_ONLY = ("model_ref", "weights", "data_ref", "suite_ref", "eps", "n", "out_dir", "resume", "batch_size",
            "trust_code", "requirement", "seed", "device", "verify_key", "executor", "address", "shard_size",
            "workers")
COMPARE_ONLY = ("require_no_regression", "tolerance", "allow_different_data", "allow_different_suite")
REQUIREMENTS = "bastion.bench.requirements"


def given_options(ctx: click.Context, names: tuple[str, ...]) -> list[str]:
    """The flags (``--model``, ...) among ``names`` that the user set, on the command line or from the environment."""
    flags = {p.name: max(p.opts, key=len) for p in ctx.command.params}
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return [flags[name] for name in names if ctx.get_parameter_source(name) in given]


def parse_tolerance(text: str) -> float:
    """``0.01`` or ``1%``: a fraction in [0, 1)."""
    number = text.strip()
    percent = number.endswith("%")
    try:
        value = float(number.rstrip("%")) / (100.0 if percent else 1.0)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise UsageError(f"--tolerance {text!r}: give a fraction in [0, 1) or a percentage, e.g. 0.01 or 1%")
    return value


def _junit_target(junit_path: str | None) -> Path | None:
    """The --junit path, with its directory made now: a bad path fails before a long run, not after."""
    if junit_path is None:
        return None
    path = Path(junit_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--junit {path}: cannot create its directory ({exc.strerror})") from None
    return path


def _write(path: Path, *args: Any, **kwargs: Any) -> None:
    try:
        write_junit(path, *args, **kwargs)
    except OSError as exc:
        raise UsageError(f"--junit {path}: cannot write it ({exc.strerror})") from None


# ---- the gate --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gate:
    """The checks a benchmark run ends with: the --require clauses, and where JUnit XML goes."""

    requirement: str | None
    clauses: tuple[Clause, ...]
    junit: Path | None

    @classmethod
    def parse(cls, requirement: str | None, junit_path: str | None) -> Gate:
        """Parse before anything runs: a malformed requirement is a usage error (exit 2)."""
        clauses = tuple(parse_requirement(requirement)) if requirement is not None else ()
        return cls(requirement, clauses, _junit_target(junit_path))

    def check_measurable(self, epsilons: tuple[float, ...] | list[float]) -> None:
        """Refuse a clause at an eps the run will not measure (before the run, not after it)."""
        for clause in self.clauses:
            if clause.eps is not None and not any(math.isclose(clause.eps, e) for e in epsilons):
                raise UsageError(f"--require: {clause} asks for eps {clause.eps:g}, which this run does not measure "
                                 f"(eps {', '.join(f'{e:g}' for e in epsilons)}); add it with --eps")

    def judge(self, report: dict) -> list[Outcome]:
        if self.requirement is None:
            return []
        return evaluate_requirement(self.requirement, summarise_report(report, "the report", UsageError))

    def lines(self, outcomes: list[Outcome], report: dict) -> list[str]:
        return [f"  requirement {o.clause}: {'met' if o.met else 'NOT MET'} ({_measured(o, report)})"
                for o in outcomes]

    def summary(self, outcomes: list[Outcome], report: dict) -> dict[str, Any]:
        """The gate's part of `bastion bench --json`."""
        extra: dict[str, Any] = {}
        if self.requirement is not None:
            extra["requirement"] = self.requirement
            extra["requirements_met"] = all(o.met for o in outcomes)
            extra["requirements"] = [{"clause": str(o.clause), "met": o.met, "measured": o.value,
                                      "detail": _measured(o, report)} for o in outcomes]
        if self.junit is not None:
            extra["junit"] = str(self.junit)
        return extra

    def write_junit(self, report: dict, out: Path, outcomes: list[Outcome]) -> None:
        if self.junit is None:
            return
        cases = [Case(f"requirement {o.clause}", REQUIREMENTS, details=f"measured {_measured(o, report)}")
                 if o.met else
                 Case(f"requirement {o.clause}", REQUIREMENTS, failure=f"{o.clause} not met: {_measured(o, report)}",
                      failure_type="requirement-not-met")
                 for o in outcomes]
        s, timing = report["summary"], report["timing"]
        properties = {"model": s["model"], "model_sha256": report["model"].get("sha256", ""),
                      "data": report["data"]["name"], "data_sha256": report["data"]["sha256"], "suite": s["suite"],
                      "norm": s["norm"], "n": s["n"], "seed": report["seed"], "clean_accuracy": s["clean_accuracy"],
                      **{f"robust_accuracy[{r['eps']:g}]": r["robust_accuracy"] for r in report["results"]},
                      "report": str(out / "report.json")}
        if self.requirement is not None:
            properties["requirement"] = self.requirement
        _write(self.junit, f"bastion bench {s['model']} (suite {s['suite']})", cases + indicator_cases(report),
               seconds=timing["attacks_seconds"] + timing["indicators_seconds"], timestamp=report["created"],
               properties=properties)

    def exit_if_unmet(self, outcomes: list[Outcome], out: Path) -> None:
        unmet = [o for o in outcomes if not o.met]
        if unmet:
            raise CheckFailed(f"requirement not met: {'; '.join(f'{o.clause} (measured {_value(o)})' for o in unmet)}"
                              f"; the report is in {out}")


def _value(outcome: Outcome) -> str:
    return "nothing" if outcome.value is None else f"{outcome.value:g}"


def _measured(outcome: Outcome, report: dict) -> str:
    """The measured value of a clause, with its count and interval where it is an accuracy."""
    clause = outcome.clause
    if outcome.value is None:
        return "not measured"
    if clause.field == "flags":
        fired = report["summary"]["indicators_fired"]
        return f"{outcome.value:g} fired" + (f": {', '.join(fired)}" if fired else "")
    if clause.field == "clean_accuracy":
        entry, key = report["summary"], "clean_accuracy"
    elif clause.field == "robust_accuracy":
        candidates = [r for r in report["results"] if clause.eps is None or math.isclose(r["eps"], clause.eps)]
        entry, key = min(candidates, key=lambda r: r["robust_accuracy"]), "robust_accuracy"
    else:
        return f"{outcome.value:g}"
    ci = entry[f"{key}_ci"]
    at = f" at eps {entry['eps']:g}" if clause.field == "robust_accuracy" and clause.eps is None else ""
    return f"{outcome.value:g}{at}, {ci['k']} of {ci['n']}, 95% CI [{ci['low']:.4g}, {ci['high']:.4g}]"


# ---- --compare ------------------------------------------------------------------------------
def compare_and_print(runs: tuple[str, str], *, tolerance: float, allow_different_data: bool,
                      allow_different_suite: bool, require_no_regression: bool, junit_path: str | None,
                      as_json: bool, quiet: bool) -> None:
    from bastion.evaluation.compare import compare_runs, render_comparison

    junit = _junit_target(junit_path)
    comparison = compare_runs(runs[0], runs[1], tolerance=tolerance, allow_different_data=allow_different_data,
                              allow_different_suite=allow_different_suite)
    if junit is not None:
        _write(junit, "bastion bench --compare", comparison.cases(),
               properties={"a": comparison.a.source, "b": comparison.b.source, "tolerance": tolerance,
                           "same_data": comparison.same_data, "same_suite": comparison.same_suite})
    if as_json:
        emit_json({**comparison.to_dict(), **({"junit": str(junit)} if junit else {})})
    elif not quiet:
        click.echo(render_comparison(comparison))
    if require_no_regression and comparison.regressions:
        raise CheckFailed(f"B regressed against A: {'; '.join(comparison.regression_lines())}")
