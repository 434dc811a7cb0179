"""The syntax of model names and versions, and of the glob patterns policies grant them with.

One definition, checked on both sides: a policy's patterns when it is loaded, and the
name in every request before any pattern is matched against it.

    model name  := 1-128 of  A-Z a-z 0-9 . _ -   starting with a letter or digit, no ".."
    version     := the same alphabet, 1-64 long
    pattern     := the name alphabet plus "*" (any run of name characters) and "?" (one),
                   or "*" alone (every model)

A name holds no "/", no "..", no whitespace and no glob characters, so a pattern can only
ever match within one name: ``mnist-*`` matches ``mnist-cnn`` and never
``mnist-cnn/../../x`` (which is not a name at all and is refused before matching).
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Any

MAX_NAME_CHARS = 128
MAX_VERSION_CHARS = 64
ANY_MODEL = "*"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PATTERN = re.compile(r"[A-Za-z0-9._*?-]{1,128}")


def model_name_problem(name: Any) -> str | None:
    """Why ``name`` is not a model name, or None if it is one."""
    return _syntax_problem(name, _NAME, "model name", MAX_NAME_CHARS)


def version_problem(version: Any) -> str | None:
    """Why ``version`` is not a model version, or None if it is one."""
    return _syntax_problem(version, _VERSION, "model version", MAX_VERSION_CHARS)


def _syntax_problem(value: Any, syntax: re.Pattern, what: str, most: int) -> str | None:
    if not issubclass(type(value), str):
        return f"a {what} must be a string, got {type(value).__name__}"
    if not syntax.fullmatch(value) or ".." in value:
        return (f"{value[:80]!r} is not a {what} (1-{most} letters, digits, '.', '_' or '-', "
                "starting with a letter or digit, no '..')")
    return None


def model_pattern_problem(pattern: Any) -> str | None:
    """Why ``pattern`` is not a model name pattern, or None if it is one."""
    if not issubclass(type(pattern), str):
        return f"a model pattern must be a string, got {type(pattern).__name__}"
    if pattern == ANY_MODEL:
        return None
    if not _PATTERN.fullmatch(pattern) or ".." in pattern:
        return (f"{pattern[:80]!r} is not a model name pattern (name characters plus '*' and '?'; "
                "no '/', '[', ']' or '..')")
    return None


def model_matches(pattern: str, name: str) -> bool:
    """Whether the valid model ``name`` matches the valid ``pattern``; both must already be checked."""
    if pattern == ANY_MODEL or pattern == name:
        return True
    return ("*" in pattern or "?" in pattern) and fnmatchcase(name, pattern)
