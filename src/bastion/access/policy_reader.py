"""Reading one table of a policy file: typed getters whose errors name the file and the key.

Shared by the policy loader and the sections other features add to a policy
(``[models]``, ``[limits]``), so every policy error reads ``file: table.key: problem``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from bastion.errors import ConfigError


class TableReader:
    """Typed access to one table of the policy, raising ConfigError that names file and key."""

    def __init__(self, source: str, table: Mapping[str, Any], prefix: str, allowed: set[str]):
        self.source, self.table, self.prefix = source, table, prefix
        unknown = sorted(set(table) - allowed)
        if unknown:
            self.fail(unknown[0], f"unknown key (known: {', '.join(sorted(allowed))})")

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(f"{self.source}: {self.prefix}{key}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False) -> Any:
        if key not in self.table:
            if required:
                self.fail(key, "missing (required)")
            return default
        value = self.table[key]
        if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else ()):
            self.fail(key, f"expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            self.fail(key, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def strings(self, key: str, default: list[str] | None = None, *, required: bool = False) -> list[str]:
        value = self.get(key, list, default, required=required)
        if value is None:
            return []
        if not all(isinstance(item, str) for item in value):
            self.fail(key, "expected a list of strings")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(key, (int, float), default)
        if not low <= value <= high:
            self.fail(key, f"{value} is out of range ({low:g} to {high:g})")
        return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
             dict: "a table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def resolve_path(base_dir: Path, text: str) -> Path:
    """``text`` as a path, relative paths taken from the policy file's folder ``base_dir``."""
    path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else base_dir / path
