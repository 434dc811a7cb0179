"""The syntax of OAuth scopes (RFC 6749 section 3.3), one definition for tokens and policies alike.

    scope       = scope-token *( SP scope-token )
    scope-token = 1*( %x21 / %x23-5B / %x5D-7E )     printable ASCII except space, '"' and '\\'

Only the space character (%x20) separates scope tokens. A tab, a newline, a no-break
space or any other Unicode whitespace is not a separator but a character no scope
token may hold, so ``"predict\\u00a0admin"`` is a malformed scope string that denies
the token, never the two scopes ``predict`` and ``admin``. Empty tokens (two spaces in
a row, a leading or trailing space, an empty string) are malformed too: a string is
accepted exactly as written or not at all, never rewritten into something valid.

A ``scope`` claim may also be a JSON list, each element one scope token. A policy
names its scopes with the same syntax (at most :data:`MAX_SCOPE_NAME_CHARS` long).
"""

from __future__ import annotations

import re
from typing import Any

from bastion.errors import TokenError

MAX_SCOPE_NAME_CHARS = 128

_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_SCOPE_STRING = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*")
_SCOPE_CHAR = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]")
_SYNTAX = "printable ASCII except space, '\"' and '\\', tokens separated by single spaces (RFC 6749)"


def scope_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name a scope in a policy, or None if it can."""
    if not issubclass(type(name), str):
        return f"a scope name must be a string, got {type(name).__name__}"
    if len(name) > MAX_SCOPE_NAME_CHARS:
        return f"a scope name is at most {MAX_SCOPE_NAME_CHARS} characters, this one has {len(name)}"
    if not _SCOPE_TOKEN.fullmatch(name):
        return f"{name[:80]!r} is not a scope name ({_syntax_problem(name)}; {_SYNTAX})"
    return None


def scopes_from_claim(value: Any) -> tuple[str, ...]:
    """The scopes a token's ``scope`` claim holds (absent: none); TokenError for a malformed claim."""
    if isinstance(value, str):
        if not _SCOPE_STRING.fullmatch(value):
            raise TokenError(f"scope claim is malformed: {_syntax_problem(value)} ({_SYNTAX})")
        return tuple(value.split(" "))
    if isinstance(value, list):
        for index, item in enumerate(value):
            if not issubclass(type(item), str):
                raise TokenError(f"scope claim must be a space-separated string or a list of strings "
                                 f"(element {index} is a {type(item).__name__})")
            if not _SCOPE_TOKEN.fullmatch(item):
                raise TokenError(f"scope claim is malformed: element {index} is not a scope token "
                                 f"({_syntax_problem(item)}; {_SYNTAX})")
        return tuple(value)
    raise TokenError(f"scope claim must be a space-separated string or a list of strings, "
                     f"got {_json_type(value)}")


def scope_string_problem(value: Any) -> str | None:
    """Why ``value`` is not a scope string a token can carry as written, or None if it is one."""
    if not issubclass(type(value), str):
        return f"a scope must be a string, got {type(value).__name__}"
    if not _SCOPE_STRING.fullmatch(value):
        return f"scope {value[:80]!r} is malformed: {_syntax_problem(value)} ({_SYNTAX})"
    return None


def _syntax_problem(text: str) -> str:
    """The first thing that breaks the scope syntax in ``text``, said so a person can find it."""
    if not text:
        return "it is empty"
    if text.startswith(" ") or text.endswith(" "):
        return "it starts or ends with a space"
    if "  " in text:
        return "it has an empty scope between two spaces"
    for position, char in enumerate(text):
        if char != " " and not _SCOPE_CHAR.fullmatch(char):
            return f"character U+{ord(char):04X} at position {position} is not allowed"
    return "it is not a scope string"  # not reached: every other string matches


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", dict: "an object"}.get(type(value),
                                                                                        type(value).__name__)
