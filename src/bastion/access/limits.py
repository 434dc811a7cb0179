"""The ``[limits]`` section of a policy: how much each caller may ask, and how much the server takes.

    [limits]
    max_in_flight = 64               # requests being served at once; more get 503 (never an unbounded queue)
    max_body_bytes = 4194304         # request bodies above this get 413, before they are read
    [limits.failed_auth]             # per client address: failed authentications (token bucket)
    rate = 1.0                       #   refilled per second
    burst = 20                       #   at most this many in a row
    [limits.default]                 # per caller (issuer + subject), for scopes without their own entry
    rate = 100.0
    burst = 200
    [limits.scopes.predict]          # per caller and scope: the scope that granted the request pays
    rate = 20.0
    burst = 40

With no ``[limits.default]`` and no entry for a scope, callers of that scope are not rate
limited (the in-flight cap still applies). Rates are requests per second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bastion.access.policy_reader import TableReader
from bastion.errors import ConfigError

LIMITS_KEYS = {"max_in_flight", "max_body_bytes", "failed_auth", "default", "scopes", "description"}
RATE_KEYS = {"rate", "burst"}


@dataclass(frozen=True)
class Rate:
    """A token bucket: ``burst`` requests at once, refilled at ``rate`` per second."""

    rate: float
    burst: float


@dataclass(frozen=True)
class Limits:
    max_in_flight: int = 64
    max_body_bytes: int = 4 * 1024 * 1024
    failed_auth: Rate = Rate(1.0, 20)
    default: Rate | None = None
    scopes: Mapping[str, Rate] = field(default_factory=dict)

    def for_scope(self, scope: str | None) -> Rate | None:
        """The per-caller bucket the scope that granted a request draws from (None: unlimited)."""
        if scope is None:
            return self.default
        return self.scopes.get(scope, self.default)


def parse_limits_section(raw: Any, source: str, scope_names: Iterable[str]) -> Limits:
    """The validated ``[limits]`` table (defaults when the policy has none)."""
    if raw is None:
        return Limits()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: limits: expected a table ([limits])")
    reader = TableReader(source, raw, "limits.", LIMITS_KEYS)
    reader.get("description", str)
    in_flight = reader.get("max_in_flight", int, 64)
    if not 1 <= in_flight <= 100_000:
        reader.fail("max_in_flight", f"{in_flight} is out of range (1 to 100000)")
    body = reader.get("max_body_bytes", int, 4 * 1024 * 1024)
    if not 1024 <= body <= 1024 * 1024 * 1024:
        reader.fail("max_body_bytes", f"{body} is out of range (1024 to 1073741824)")
    failed = _rate(source, reader.get("failed_auth", dict), "limits.failed_auth.") or Limits().failed_auth
    default = _rate(source, reader.get("default", dict), "limits.default.")
    known = set(scope_names)
    scopes = {}
    for name, table in reader.get("scopes", dict, {}).items():
        if name not in known:
            raise ConfigError(f"{source}: limits.scopes.{name}: no such scope (define [scopes.{name}] first; "
                              f"known: {', '.join(sorted(known))})")
        scopes[name] = _rate(source, table, f"limits.scopes.{name}.")
    return Limits(in_flight, body, failed, default, scopes)


def _rate(source: str, table: Any, prefix: str) -> Rate | None:
    if table is None:
        return None
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: {prefix[:-1]}: expected a table with rate and burst")
    reader = TableReader(source, table, prefix, RATE_KEYS)
    rate = reader.get("rate", (int, float), required=True)
    burst = reader.get("burst", (int, float), required=True)
    if not 0 < rate <= 1e9:
        reader.fail("rate", f"{rate} is out of range (more than 0, requests per second)")
    if not 1 <= burst <= 1e9:
        reader.fail("burst", f"{burst} is out of range (at least 1 request)")
    return Rate(float(rate), float(burst))
