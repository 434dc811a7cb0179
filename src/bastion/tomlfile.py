"""Reading a TOML data file (recipe, bundle metadata, policy) with one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from bastion.errors import BastionError
from bastion.fsutil import read_regular_file

#: The largest TOML data file bastion reads (suites, recipes, policies and bundle metadata are a few KiB).
MAX_TOML_BYTES = 4 << 20


def read_toml_text(path: str | Path, error: type[BastionError], what: str = "TOML file") -> str:
    """The text of a TOML file; missing, not a regular file (a directory, a FIFO), unreadable,
    over :data:`MAX_TOML_BYTES` or not UTF-8 raises ``error`` naming it."""
    data = read_regular_file(path, limit=MAX_TOML_BYTES, error=error, what=what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text; expected a {what}") from None


def read_toml(path: str | Path, error: type[BastionError], what: str = "TOML file") -> dict[str, Any]:
    """Parse ``path``; an unreadable, non-UTF-8 or malformed file raises ``error`` naming it."""
    text = read_toml_text(path, error, what)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: malformed TOML ({exc})") from None
    except RecursionError:
        raise error(f"{path}: malformed TOML (arrays or tables nested too deeply)") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise error(f"{path}: malformed TOML ({exc})") from None
