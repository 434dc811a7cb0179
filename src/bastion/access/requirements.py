"""A tiny, safe requirement language for attested evaluations: ``robust_accuracy>=0.8 and flags==0``.

    requirement := clause ("and" clause)*
    clause      := field op number["%"]
    field       := clean_accuracy | robust_accuracy | robust_accuracy[EPS] | n | flags
    op          := >= | <= | > | < | == | !=

``robust_accuracy`` alone is the worst case over every attested eps;
``robust_accuracy[0.3]`` the worst case at eps 0.3; ``flags`` the number of
attack-failure indicators raised. ``85%`` means 0.85. Parsed by a regular
tokenizer, never by eval.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any

from bastion.errors import UsageError, VerificationError

FIELDS = ("clean_accuracy", "robust_accuracy", "n", "flags")
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq,
        "!=": operator.ne}
_CLAUSE = re.compile(r"\s*([a-z_]+)\s*(?:\[\s*([0-9.eE+-]+)\s*\])?\s*(>=|<=|==|!=|>|<)\s*([0-9.eE+-]+)\s*(%?)\s*")
MAX_REQUIREMENT_CHARS = 500


@dataclass(frozen=True)
class Clause:
    field: str
    eps: float | None
    op: str
    value: float

    def __str__(self) -> str:
        name = self.field if self.eps is None else f"{self.field}[{self.eps:g}]"
        return f"{name}{self.op}{self.value:g}"


def parse_requirement(text: str) -> list[Clause]:
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_REQUIREMENT_CHARS:
        raise UsageError("--require: give e.g. \"robust_accuracy>=0.8\" (clauses joined by 'and')")
    clauses = []
    for part in re.split(r"\band\b", text.strip()):
        match = _CLAUSE.fullmatch(part)
        if not match:
            raise UsageError(f"--require: cannot parse {part.strip()!r}: expected FIELD OP NUMBER, "
                             f"e.g. robust_accuracy>=0.8 (fields: {', '.join(FIELDS)}, robust_accuracy[EPS])")
        field, eps_text, op, number, percent = match.groups()
        if field not in FIELDS:
            raise UsageError(f"--require: unknown field {field!r} (use {', '.join(FIELDS)} or robust_accuracy[EPS])")
        if eps_text is not None and field != "robust_accuracy":
            raise UsageError(f"--require: only robust_accuracy takes [EPS], not {field}")
        value = _number(number, part) / (100.0 if percent else 1.0)
        eps = _number(eps_text, part) if eps_text is not None else None
        clauses.append(Clause(field, eps, op, value))
    return clauses


@dataclass(frozen=True)
class Outcome:
    """One clause against one evaluation: the value it measured (None if the evaluation has none) and the verdict."""

    clause: Clause
    value: float | None
    met: bool


def evaluate_requirement(text: str, evaluation: dict[str, Any]) -> list[Outcome]:
    """Every clause of ``text`` against ``evaluation`` (the shape of ``report_summary``), in order.

    A clause the evaluation cannot answer (``robust_accuracy[EPS]`` at an eps it lacks) is
    not met and has no value. Raises UsageError only for a malformed requirement.
    """
    outcomes = []
    for clause in parse_requirement(text):
        value = _field_value(clause, evaluation)
        outcomes.append(Outcome(clause, value, value is not None and _OPS[clause.op](value, clause.value)))
    return outcomes


def check_requirement(text: str, evaluation: dict[str, Any], source: str) -> list[str]:
    """Evaluate every clause; raise VerificationError naming the first that fails. Returns the clauses met."""
    met = []
    for outcome in evaluate_requirement(text, evaluation):
        clause = outcome.clause
        if outcome.value is None:
            known = measured_eps(evaluation)
            raise VerificationError(f"{source}: no robust accuracy attested at eps {clause.eps:g} "
                                    f"(attested eps: {', '.join(f'{e:g}' for e in known) or 'none'})")
        if not outcome.met:
            raise VerificationError(f"{source}: requirement {clause} not met (attested value {outcome.value:g})")
        met.append(f"{clause} (attested {outcome.value:g})")
    return met


def measured_eps(evaluation: dict[str, Any]) -> list[float]:
    """The eps values the evaluation has a robust accuracy for, ascending."""
    return sorted({e["eps"] for e in evaluation["robust_accuracy"] if e["eps"] is not None})


def _field_value(clause: Clause, evaluation: dict[str, Any]) -> float | None:
    if clause.field == "robust_accuracy":
        entries = evaluation["robust_accuracy"]
        if clause.eps is not None:
            entries = [e for e in entries if e["eps"] is not None and math.isclose(e["eps"], clause.eps)]
            if not entries:
                return None
        return min(e["accuracy"] for e in entries)
    if clause.field == "flags":
        return float(len(evaluation["flags"]))
    return float(evaluation[clause.field])


def _number(text: str, clause: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--require: {text!r} in {clause.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"--require: {text!r} is not a finite number")
    return value
