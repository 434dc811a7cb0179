"""Reading a TOML data file (recipe, bundle metadata, policy) with one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from bastion.errors import BastionError


def read_toml(path: str | Path, error: type[BastionError]) -> dict[str, Any]:
    """Parse ``path``; an unreadable, non-UTF-8 or malformed file raises ``error`` naming it."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: malformed TOML ({exc})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text; expected a TOML file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
