"""The ``state`` key of a policy: where a gateway keeps rate-limit buckets and spent one-time jti values.

    state = "redis://127.0.0.1:6379/0"          # shorthand: every replica shares state in this Redis

    [state]                                     # or a table, with its options
    url = "redis://10.0.0.5:6379/0"             # redis://, rediss:// (TLS), unix:///run/redis.sock, or "memory"
    key_prefix = "prod"                         # keys are bastion:<key_prefix>:...; default: a digest of the audience
    timeout_seconds = 0.25                      # per Redis call, connecting included
    on_error = "closed"                         # Redis unreachable: "closed" refuses (503); "open" lets requests
                                                # past the rate limits. One-time jti always fail closed.
    username = "bastion"                        # a Redis ACL user (optional)
    password_env = "BASTION_REDIS_PASSWORD"     # or password_file; never the password itself, nor in the url

Without the key the state is ``memory``: this process only, which is right for one gateway
and wrong for several behind a load balancer (each would keep its own buckets and spent jti).
The section is data for the serving layer, which builds the client from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bastion.access.policy_reader import TableReader, resolve_path
from bastion.access.token_keys import read_secret_file
from bastion.errors import BastionError, ConfigError

MEMORY = "memory"
SCHEMES = ("redis", "rediss", "unix")
ON_ERROR = ("closed", "open")
STATE_KEYS = {"url", "key_prefix", "timeout_seconds", "on_error", "username", "password_env", "password_file",
              "description"}
DEFAULT_TIMEOUT_SECONDS = 0.25
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


@dataclass(frozen=True)
class SharedStateConfig:
    """Where the gateway's mutable security state lives, and what to do when that store is down."""

    url: str = MEMORY
    #: The middle of every key (``bastion:<key_prefix>:...``); None: derived from the policy's audience.
    key_prefix: str | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    #: "closed" or "open": for rate limits only; a one-time jti is never accepted unchecked.
    on_error: str = "closed"
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def shared(self) -> bool:
        return self.url != MEMORY

    @property
    def rate_limits_fail_open(self) -> bool:
        return self.on_error == "open"


def state_config(policy: Any) -> SharedStateConfig:
    """A policy's ``state`` section (in-process memory when it has none)."""
    return policy.sections.get("state") or SharedStateConfig()


def parse_state_section(raw: Any, source: str, base_dir: Path, environ: Mapping[str, str]) -> SharedStateConfig:
    """``state = "URL"`` or a ``[state]`` table, validated; ConfigError naming file and key otherwise."""
    if isinstance(raw, str):
        return SharedStateConfig(url=_url(raw, lambda problem: _fail(source, "state", problem)))
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: state: expected a URL (state = \"redis://HOST:6379/0\") or a table ([state])")
    reader = TableReader(source, raw, "state.", STATE_KEYS)
    reader.get("description", str)
    url = _url(reader.get("url", str, required=True), lambda problem: reader.fail("url", problem))
    prefix = reader.get("key_prefix", str)
    if prefix is not None and not _PREFIX.fullmatch(prefix):
        reader.fail("key_prefix", "1 to 64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit")
    on_error = reader.get("on_error", str, "closed")
    if on_error not in ON_ERROR:
        reader.fail("on_error", f"{on_error!r} is not one of {', '.join(ON_ERROR)} (one-time jti always fail closed)")
    config = SharedStateConfig(url=url, key_prefix=prefix,
                               timeout_seconds=reader.number("timeout_seconds", DEFAULT_TIMEOUT_SECONDS, 0.01, 5),
                               on_error=on_error, username=reader.get("username", str),
                               password=_password(reader, base_dir, environ))
    if not config.shared and (config.username or config.password or prefix):
        reader.fail("url", "username, password and key_prefix apply to a Redis url, not to memory")
    return config


def _url(text: str, fail) -> str:
    if text == MEMORY:
        return text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        fail(f"{text[:100]!r} is not a URL ({exc})")
    if parts.scheme not in SCHEMES:
        fail(f"{text[:100]!r}: expected redis://HOST[:PORT][/DB], rediss://... (TLS), unix:///PATH or memory")
    if parts.password is not None:
        fail("a policy file never holds a secret: take the password out of the url and use password_env or "
             "password_file in a [state] table")
    query = parse_qs(parts.query, keep_blank_values=True)
    if parts.fragment or set(query) - {"db"}:
        fail("the url takes no options but ?db=N; the others are [state] keys")
    if any(not value.isdigit() for value in query.get("db", [])):
        fail("?db= takes a database number")
    if parts.scheme == "unix":
        if not parts.path:
            fail("a unix url names the socket: unix:///path/to/redis.sock")
    else:
        if not parts.hostname:
            fail("the url names no host (redis://HOST[:PORT][/DB])")
        if port == 0:
            fail("port 0 is not a Redis server's port")
        if parts.path.strip("/") and not parts.path.strip("/").isdigit():
            fail(f"database {parts.path.strip('/')[:40]!r} is not a number (redis://HOST:PORT/0)")
    return text


def _password(reader: TableReader, base_dir: Path, environ: Mapping[str, str]) -> str | None:
    where = [key for key in ("password_env", "password_file") if key in reader.table]
    if not where:
        return None
    if len(where) > 1:
        reader.fail("password_file", "give password_env or password_file, not both")
    name = reader.get(where[0], str)
    if where[0] == "password_env":
        if not environ.get(name):
            reader.fail("password_env", f"environment variable {name} is not set; export the Redis password in it")
        return environ[name]
    try:
        secret = read_secret_file(resolve_path(base_dir, name))
        return secret.decode("utf-8")
    except (BastionError, UnicodeDecodeError) as exc:
        reader.fail("password_file", str(exc) if isinstance(exc, BastionError) else "the password is not UTF-8 text")


def _fail(source: str, key: str, problem: str):
    raise ConfigError(f"{source}: {key}: {problem}")
