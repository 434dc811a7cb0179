"""Attack suites: TOML files naming attacks from the registry, their parameters, a norm and eps.

    name = "standard"
    description = "AutoAttack, standard version"
    norm = "linf"
    eps = 0.3                 # or a list, for a sweep: [0.1, 0.2, 0.3]

    [[attack]]
    name = "apgd-ce"          # a registry name; every other key is a constructor parameter
    steps = 100

A suite is data: loading one reads TOML and looks names up in the attack
registry, nothing else. Every problem is a one-line :class:`ConfigError`
naming the file, the line (where it can be found) and the key.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bastion.attacks import ATTACKS, Attack
from bastion.catalog import resolve
from bastion.errors import AttackError, ConfigError, ThreatModelError
from bastion.fsutil import read_regular_file
from bastion.threat import NORMS, ThreatModel
from bastion.tomlfile import MAX_TOML_BYTES

TOP_LEVEL_KEYS = ("name", "description", "norm", "eps", "attack")
#: Set by the run (``--seed``), so a suite cannot pin it per attack.
RESERVED_PARAMS = ("seed",)
_SCALARS = (str, int, float, bool)


@dataclass(frozen=True)
class AttackSpec:
    """One ``[[attack]]`` entry: a registry name and its constructor parameters."""

    name: str
    params: dict[str, Any]
    label: str  # unique within the suite: the name, or name#k when a name repeats
    family: str  # the family of the attack these parameters make (the ART adapter's depends on them)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    norm: str
    epsilons: tuple[float, ...]
    attacks: tuple[AttackSpec, ...]
    path: str
    digest: str  # sha256 of the file's bytes: a resumed run must use the same suite
    #: Where the eps came from, for errors: "FILE:LINE (key 'eps')" or "--eps".
    eps_source: str = field(default="", compare=False)

    def with_eps(self, eps: list[float]) -> Suite:
        """The same suite at other eps values (the CLI's --eps)."""
        try:
            threat = ThreatModel(norm=self.norm, eps=tuple(eps))
        except ThreatModelError as exc:
            raise ConfigError(f"--eps: {exc}") from None
        return replace(self, epsilons=threat.epsilons, eps_source="--eps")

    def check_inputs(self, bounds: tuple[float, float], sample_shape: tuple[int, ...]) -> None:
        """Refuse, before anything runs, an eps beyond the input box of these samples (see
        :func:`bastion.threat.max_eps`); the error names the suite file's line or --eps."""
        try:
            ThreatModel(norm=self.norm, eps=self.epsilons, bounds=bounds).check_sample_shape(sample_shape)
        except ThreatModelError as exc:
            raise ConfigError(f"{self.eps_source or self.path}: {exc}") from None

    def threat(self, eps: float, bounds: tuple[float, float]) -> ThreatModel:
        return ThreatModel(norm=self.norm, eps=eps, bounds=bounds)

    def build(self, spec: AttackSpec, threat: ThreatModel, *, seed: int, batch_size: int | None = None) -> Attack:
        """Instantiate one entry for ``threat`` (already validated at load time)."""
        params = dict(spec.params)
        if batch_size is not None:
            params.setdefault("batch_size", batch_size)
        return ATTACKS[spec.name](threat, seed=seed, **params)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "path": self.path, "sha256": self.digest,
                "norm": self.norm, "eps": list(self.epsilons),
                "attacks": [{"label": a.label, "name": a.name, "family": a.family, "params": a.params}
                            for a in self.attacks]}


def load_suite(name_or_path: str | Path) -> Suite:
    """Load and validate a suite by name (``standard``) or by path."""
    path = resolve("attacks", name_or_path)
    raw_bytes = read_regular_file(path, limit=MAX_TOML_BYTES, error=ConfigError, what="suite file")
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; a suite is a TOML file") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}{_decode_error_line(exc)}: malformed TOML: {_decode_error_message(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: malformed TOML: arrays or tables nested too deeply") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    return _validate(doc, text, path, hashlib.sha256(raw_bytes).hexdigest())


def _validate(doc: dict, text: str, path: Path, digest: str) -> Suite:
    where = _Locator(text, path)
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            raise where.error(key, f"unknown key {key!r} (allowed: {', '.join(TOP_LEVEL_KEYS)})")
    name = doc.get("name", path.stem)
    description = doc.get("description", "")
    for key, value in (("name", name), ("description", description)):
        if not isinstance(value, str):
            raise where.error(key, f"{key} must be a string")
    norm = doc.get("norm", "linf")
    if norm not in NORMS:
        raise where.error("norm", f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if "eps" not in doc:
        raise ConfigError(f"{path}: missing key 'eps' (a number, or a list of numbers for a sweep)")
    epsilons = _check_eps(doc["eps"], where)
    entries = doc.get("attack")
    if entries is None:
        raise ConfigError(f"{path}: no attacks: add at least one [[attack]] table with a name")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise where.error("attack", "attack must be a list of tables: write each as [[attack]] with name = ...")
    # The attacks' parameters are checked against a threat model at the largest eps. The input range
    # is known only once the data is (Suite.check_inputs then bounds the eps), so any range wide
    # enough for that eps does here.
    threat = ThreatModel(norm=norm, eps=epsilons[-1], bounds=(0.0, max(1.0, epsilons[-1])))
    names = [e.get("name") for e in entries]
    specs = []
    for index, entry in enumerate(entries):
        spec = _check_entry(entry, index, names, threat, where)
        specs.append(spec)
    eps_line = where.line_of("eps", None)
    return Suite(name=name, description=description, norm=norm, epsilons=epsilons, attacks=tuple(specs),
                 path=str(path), digest=digest,
                 eps_source=f"{path}{f':{eps_line}' if eps_line else ''} (key 'eps')")


def _check_eps(value: Any, where: _Locator) -> tuple[float, ...]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise where.error("eps", "eps list is empty: give at least one eps")
    numbers = []
    for v in values:
        number = _as_float(v)
        if number is None or not math.isfinite(number) or number < 0:
            shown = f"{v!r}" if not isinstance(v, int) or abs(v) < 10 ** 20 else "an integer too large for a float"
            raise where.error("eps", f"eps must be a finite number >= 0 (or a list of them), got {shown}")
        numbers.append(number)
    return tuple(sorted(set(numbers)))


def _as_float(value: Any) -> float | None:
    """A TOML number as a float; None for anything else (booleans included) or an integer too large."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _check_entry(entry: dict, index: int, names: list, threat: ThreatModel, where: _Locator) -> AttackSpec:
    name = entry.get("name")
    if name is None:
        raise where.error("name", f"attack #{index + 1} has no name", table=index)
    if not isinstance(name, str):
        raise where.error("name", f"attack #{index + 1}: name must be a string", table=index)
    if name not in ATTACKS:
        raise where.error("name", f"unknown attack {name!r} (registry: {', '.join(sorted(ATTACKS))})", table=index)
    params = {k: v for k, v in entry.items() if k != "name"}
    for key, value in params.items():
        if key in RESERVED_PARAMS:
            raise where.error(key, f"attack {name!r}: {key!r} is set for the whole run (--seed), not per attack",
                              table=index)
        if not _plain_value(value):
            raise where.error(key, f"attack {name!r}: {key} must be a number, string, boolean or a list of them",
                              table=index)
    cls = ATTACKS[name]
    problem = cls.schema().find_problem(params)
    if problem and problem.unknown:
        raise where.error(problem.key, problem.after(f"attack {name!r}"), table=index)
    if problem:
        raise where.error(problem.key, f"attack {name!r}: bad parameter value: {problem.message}", table=index)
    if threat.norm not in cls.norms:
        raise where.error("name", f"attack {name!r} does not support the {threat.norm} norm "
                          f"(supports {', '.join(cls.norms)})", table=index)
    try:
        attack = cls(threat, **params)
    except AttackError as exc:  # a check beyond the declared parameters
        raise where.error("name", f"attack {name!r}: {exc}", table=index) from None
    label = name if names.count(name) == 1 else f"{name}#{names[:index + 1].count(name)}"
    return AttackSpec(name=name, params=params, label=label, family=attack.family)


def _plain_value(value: Any) -> bool:
    if isinstance(value, _SCALARS):
        return not isinstance(value, float) or math.isfinite(value)
    return isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value)


class _Locator:
    """Finds the line of a key in the suite's text, for error messages."""

    def __init__(self, text: str, path: Path) -> None:
        self.lines = text.splitlines()
        self.path = path

    def error(self, key: str, message: str, table: int | None = None) -> ConfigError:
        line = self.line_of(key, table)
        where = f"{self.path}:{line}" if line else str(self.path)
        return ConfigError(f"{where}: {message} (key {key!r})")

    def line_of(self, key: str, table: int | None) -> int | None:
        """1-based line of ``key`` at the top level, or inside the ``table``-th ``[[attack]]``."""
        key_pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        header = re.compile(r"^\s*\[")
        if table is None:
            for number, line in enumerate(self.lines, 1):
                if header.match(line):
                    break
                if key_pattern.match(line):
                    return number
            return None
        starts = [i for i, line in enumerate(self.lines) if re.match(r"^\s*\[\[\s*attack\s*\]\]", line)]
        if table >= len(starts):
            return None
        start = starts[table]
        # A value written as a sub-table ([attack.steps]) has its key in that header.
        subtable = re.compile(rf"^\s*\[\s*attack\s*\.\s*[\"']?{re.escape(key)}[\"']?\s*\]")
        for number in range(start + 1, len(self.lines)):
            if subtable.match(self.lines[number]):
                return number + 1
            if header.match(self.lines[number]):
                break
            if key_pattern.match(self.lines[number]):
                return number + 1
        return start + 1  # the key is missing: point at the table's header


def _decode_error_line(exc: tomllib.TOMLDecodeError) -> str:
    line = getattr(exc, "lineno", None)
    if line is None:
        match = re.search(r"at line (\d+)", str(exc))
        line = int(match.group(1)) if match else None
    return f":{line}" if line else ""


def _decode_error_message(exc: tomllib.TOMLDecodeError) -> str:
    return getattr(exc, "msg", None) or re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
