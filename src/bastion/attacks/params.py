"""Declared parameters and their one check: type, default and allowed range, per parameter.

Every attack declares its parameters as a class attribute ``PARAMS`` (a :class:`Params`);
so do the sanitiser transforms. The same declaration fills in defaults, checks what a
suite file or ``bastion attack -p`` gives, sets the attributes the maths reads, and
lists the hyperparameters in reports. Types are strict: an integer parameter refuses
``true`` and ``1.5``; a number accepts an integer. Every budget (steps, restarts, queries,
searches, target classes) has a maximum, so a typo like ``steps = 10**18`` fails at once
instead of running until killed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bastion.errors import BastionError

#: The budget maxima (documented in the README's attack table).
MAX_STEPS = 10_000
MAX_RESTARTS = 100
MAX_QUERIES = 100_000
MAX_SEARCH_STEPS = 100
MAX_CLASSES = 1_000
MAX_BATCH_SIZE = 100_000

_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class Param:
    """One parameter: a name, a type (bool, int, float or str), a default, and for numbers a range."""

    name: str
    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    low_open: bool = False   # low itself is not allowed
    optional: bool = False   # None (unset, JSON null) is allowed: the attack derives the value
    help: str = ""

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None."""
        if value is None and self.optional:
            return None
        if not self._has_kind(value) or not self._in_range(value):
            return f"{self.name} must be {self.describe()}, got {_show(value)}"
        return None

    def convert(self, value: Any) -> Any:
        return float(value) if self.kind is float and value is not None else value

    def describe(self) -> str:
        text = _KINDS[self.kind]
        if self.kind is int and self.low is not None and self.high is not None:
            text += f" from {self.low:,} to {self.high:,}"
        elif self.kind in (int, float):
            text += " " + self._interval()
        return text + (" (or null for the default)" if self.optional else "")

    def _interval(self) -> str:
        low, high = self.low, self.high
        if low is not None and high is not None:
            return f"in {'(' if self.low_open else '['}{low:g}, {high:g}]"
        if low is not None:
            return f"{'>' if self.low_open else '>='} {low:g}"
        return f"<= {high:g}" if high is not None else ""

    def _has_kind(self, value: Any) -> bool:
        if isinstance(value, bool) or self.kind is bool:
            return isinstance(value, bool) and self.kind is bool
        if self.kind is float:
            return isinstance(value, (int, float)) and _finite(value)
        return isinstance(value, self.kind)

    def _in_range(self, value: Any) -> bool:
        if self.kind not in (int, float):
            return True
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high


def integer(name: str, default: int | None, low: int, high: int, **kw) -> Param:
    return Param(name, int, default, low, high, **kw)


def number(name: str, default: float | None, low: float | None = None, high: float | None = None, **kw) -> Param:
    return Param(name, float, default, low, high, **kw)


def boolean(name: str, default: bool, **kw) -> Param:
    return Param(name, bool, default, **kw)


def text(name: str, default: str, **kw) -> Param:
    return Param(name, str, default, **kw)


@dataclass(frozen=True)
class Problem:
    """What is wrong with one key of the given parameters."""

    key: str
    message: str  # names the key; for an unknown one it reads "has no parameter 'x' (...)"
    unknown: bool = False  # the key is not a parameter at all

    def after(self, subject: str) -> str:
        """The message about ``subject`` (an attack's name): "pgd has no parameter ..." or "pgd: steps must ..."."""
        return f"{subject} {self.message}" if self.unknown else f"{subject}: {self.message}"


#: Checks the keys a schema does not declare (``Params(extra=...)``): returns a Problem or None.
ExtraCheck = Callable[[dict[str, Any], dict[str, Any]], "Problem | None"]


class Params:
    """The declared parameters of one attack (or transform), in order."""

    def __init__(self, *params: Param, extra: ExtraCheck | None = None) -> None:
        self.params = params
        self.by_name = {p.name: p for p in params}
        #: Undeclared keys are refused unless ``extra`` is given; it receives (declared values with
        #: defaults, undeclared values), once the declared ones passed, and judges the whole (the ART
        #: adapter: its class name and free keywords).
        self.extra = extra

    def __add__(self, other: Params) -> Params:
        return Params(*self.params, *other.params, extra=other.extra or self.extra)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def find_problem(self, values: dict[str, Any]) -> Problem | None:
        """The first problem with ``values`` (a key not declared, or a value not allowed), or None."""
        undeclared = {k: v for k, v in values.items() if k not in self.by_name}
        for key, value in values.items():
            if key in self.by_name:
                message = self.by_name[key].problem(value)
                if message:
                    return Problem(key, message)
        if self.extra is not None:
            declared = {k: v for k, v in values.items() if k in self.by_name}
            return self.extra(self.fill(declared), undeclared)
        if undeclared:
            key = next(iter(undeclared))
            return Problem(key, f"has no parameter {key!r} ({self.takes()})", unknown=True)
        return None

    def resolve(self, values: dict[str, Any], error: type[BastionError], context: str) -> dict[str, Any]:
        """``values`` checked and completed with the defaults; a problem raises ``error`` naming ``context``."""
        problem = self.find_problem(values)
        if problem:
            raise error(problem.after(context))
        return self.fill(values)

    def fill(self, values: dict[str, Any]) -> dict[str, Any]:
        declared = {p.name: p.convert(values.get(p.name, p.default)) for p in self.params}
        return declared | {k: v for k, v in values.items() if k not in self.by_name}

    def bind(self, args: Iterable[Any], kwargs: dict[str, Any], error: type[BastionError], context: str) -> dict:
        """Positional and keyword arguments as one dict of values (positional ones in declared order)."""
        args = list(args)
        if len(args) > len(self.params):
            raise error(f"{context}: takes at most {len(self.params)} argument(s) ({self.takes()})")
        values = dict(zip(self.names, args))
        twice = sorted(set(values) & set(kwargs))
        if twice:
            raise error(f"{context}: {twice[0]} given twice")
        return values | kwargs

    def check_free(self, owner: type, base: type) -> None:
        """Each parameter becomes an attribute of ``owner``'s instances: none may hide one of ``base``'s."""
        clash = [name for name in self.names if hasattr(base, name)]
        if clash:
            raise TypeError(f"{owner.__name__}: parameter name(s) {', '.join(clash)} shadow {base.__name__} attributes")

    def takes(self) -> str:
        return f"it takes {', '.join(self.names)}" if self.params else "it takes no parameters"


def json_scalar_problem(key: str, value: Any, *, max_int: int) -> Problem | None:
    """Problem unless ``value`` is a JSON scalar (string, finite number, boolean, null) or a list of them,
    with integers within +-``max_int`` (keywords passed through to another library may be budgets)."""
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v is not None and not isinstance(v, (str, bool, int, float)):
            return Problem(key, f"{key} must be a string, number, boolean, null or a list of them, got {_show(value)}")
        if isinstance(v, float) and not math.isfinite(v):
            return Problem(key, f"{key} must be finite, got {v}")
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > max_int:
            return Problem(key, f"{key} must be at most {max_int:,} in size, got {_show(v)}")
    return None


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def _show(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int) and abs(value) >= 10 ** 12:
        text = f"{value:.3g}" if _finite(value) else "an integer too large for a float"
    else:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
