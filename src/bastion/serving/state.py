"""The gateway's mutable security state, behind one small interface so replicas can share it.

Two kinds of operation cover everything the gateway remembers between requests:

- ``take(key, rate, burst, now) -> (allowed, retry_after)`` (and ``peek``, which takes
  nothing): one token bucket per key (per caller and scope, or per client address for
  failed authentications);
- ``spend_once(key, ttl, now) -> bool``: True the first time a key is spent within
  ``ttl`` seconds (one-time ``jti`` values), False for a replay (and ``is_spent``).

Keys are ``kind\x00fields...`` (``rate``, ``fail``, ``jti``). :class:`MemoryState` keeps
them in this process; :class:`~bastion.serving.redis_state.RedisState` in a Redis that
every replica shares (the policy's ``state`` key, read by :func:`open_state`). A store
that cannot answer raises :class:`~bastion.errors.ServiceUnavailable`, and the gateway
fails closed.
"""

from __future__ import annotations

import hashlib
import math
import threading
from typing import Callable, Protocol

from bastion.access.claims_cache import replayed
from bastion.access.shared_state_config import SharedStateConfig
from bastion.errors import TokenError


class SharedState(Protocol):
    #: True when the operations wait on a network: callers on an event loop run them in a thread.
    blocking: bool
    #: Where the state lives, for logs and errors (never a password).
    where: str

    def take(self, key: str, rate: float, burst: float, now: float) -> tuple[bool, float]:
        """Take one token from ``key``'s bucket; (allowed, seconds until one is available if not)."""

    def peek(self, key: str, rate: float, burst: float, now: float) -> tuple[bool, float]:
        """Whether ``key``'s bucket holds a token (and if not, seconds until it will), taking none."""

    def spend_once(self, key: str, ttl: float, now: float) -> bool:
        """Mark ``key`` spent for ``ttl`` seconds; False if it already was (a replay)."""

    def is_spent(self, key: str, now: float) -> bool:
        """Whether ``key`` was spent and has not been forgotten yet."""

    def health(self) -> str | None:
        """None while the store answers, else why not (may wait up to the store's timeout)."""

    def close(self) -> None:
        """Let go of connections (the state is not used after this)."""


class MemoryState:
    """In-process buckets and spent keys, bounded: idle full buckets and expired keys are dropped."""

    blocking = False
    where = "memory (this process)"

    def __init__(self, max_keys: int = 1_000_000):
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float, float]] = {}  # key -> (tokens, at, full again at)
        self._spent: dict[str, float] = {}  # key -> forget at
        self._lock = threading.Lock()

    def take(self, key: str, rate: float, burst: float, now: float) -> tuple[bool, float]:
        with self._lock:
            tokens = self._level(key, rate, burst, now)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now, now + (burst - tokens) / rate)
            return allowed, 0.0 if allowed else (1.0 - tokens) / rate

    def peek(self, key: str, rate: float, burst: float, now: float) -> tuple[bool, float]:
        with self._lock:
            tokens = self._level(key, rate, burst, now)
            return tokens >= 1.0, max(0.0, (1.0 - tokens) / rate)

    def _level(self, key: str, rate: float, burst: float, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            if len(self._buckets) >= self.max_keys:
                # A bucket that has refilled is the same as no bucket: dropping it loses nothing.
                self._buckets = {k: e for k, e in self._buckets.items() if e[2] > now}
            return burst
        tokens, at, _ = entry
        return min(burst, tokens + max(0.0, now - at) * rate)

    def spend_once(self, key: str, ttl: float, now: float) -> bool:
        with self._lock:
            forget_at = self._spent.get(key)
            if forget_at is not None and forget_at > now:
                return False
            if len(self._spent) >= self.max_keys:
                self._spent = {k: t for k, t in self._spent.items() if t > now}
                if len(self._spent) >= self.max_keys:
                    raise TokenError("one-time jti store is full of unexpired tokens; refusing one-time tokens "
                                     "until some expire")
            self._spent[key] = now + ttl
            return True

    def is_spent(self, key: str, now: float) -> bool:
        with self._lock:
            forget_at = self._spent.get(key)
            return forget_at is not None and forget_at > now

    def health(self) -> str | None:
        return None

    def close(self) -> None:
        pass


def state_namespace(config: SharedStateConfig, audience: str) -> str:
    """``bastion:<key_prefix>``, or ``bastion:<digest of the audience>`` by default.

    The audience, not the whole policy file: gateways that accept the same tokens must share
    their spent jti values, and a digest of the file would split the replicas for the length
    of every policy roll-out (a jti spent at a replica on the old file could be replayed at
    one on the new).
    """
    return f"bastion:{config.key_prefix or hashlib.sha256(audience.encode('utf-8')).hexdigest()[:16]}"


def open_state(config: SharedStateConfig, audience: str,
               on_error: Callable[[str], None] | None = None) -> SharedState:
    """The store a policy's ``state`` names: this process's memory, or a shared Redis.

    ``on_error(operation)`` is called for each operation the store failed (a metric).
    """
    if not config.shared:
        return MemoryState()
    from bastion.serving.redis_state import RedisState

    return RedisState(config, state_namespace(config, audience), on_error=on_error)


class StateReplayGuard:
    """A policy's one-time-jti guard backed by a :class:`SharedState` (replaces ``Policy.replay_guard``)."""

    def __init__(self, state: SharedState):
        self.state = state

    @staticmethod
    def _key(issuer: str, jti: str) -> str:
        return f"jti\x00{issuer}\x00{jti}"

    def check_unspent(self, issuer: str, jti: str, now: float) -> None:
        """TokenError if (issuer, jti) was spent and has not expired; spends nothing."""
        if self.state.is_spent(self._key(issuer, jti), now):
            raise replayed(issuer, jti)

    def spend(self, issuer: str, jti: str, forget_at: float, now: float) -> None:
        """Mark (issuer, jti) spent until ``forget_at``; TokenError if it already was (atomic in the state)."""
        if not self.state.spend_once(self._key(issuer, jti), max(forget_at - now, 1.0), now):
            raise replayed(issuer, jti)


def retry_after_header(seconds: float) -> str:
    """Retry-After in whole seconds (RFC 9110), never 0 for a refusal."""
    return str(max(1, math.ceil(seconds)))
