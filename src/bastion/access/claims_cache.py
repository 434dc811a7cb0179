"""Bounded memory for a policy: verified tokens (to skip repeated crypto) and spent one-time jti values.

The verified-claims cache is keyed by a SHA-256 digest of the token text. A hit
skips only the signature and parsing work: the caller still re-checks that the key
which verified the entry is still trusted, expiry, revocation and one-time use on
every hit.

Replay protection keys on (iss, jti), never on the token text: an ECDSA
signature (r, s) has a twin (r, n - s) that verifies too, so the same claims
arrive as a second, different token string.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

from bastion.errors import ConfigError, TokenError


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


class VerifiedClaimsCache:
    """Least-recently-used map from token digest to its verified claims, at most ``max_entries`` long."""

    def __init__(self, max_entries: int):
        if max_entries <= 0:
            raise ConfigError("a verified-claims cache needs room for at least one entry")
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> Any | None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                self._entries.move_to_end(digest)
            return entry

    def put(self, digest: bytes, verified: Any) -> None:
        with self._lock:
            self._entries[digest] = verified
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def discard(self, digest: bytes) -> None:
        with self._lock:
            self._entries.pop(digest, None)

    def __len__(self) -> int:
        return len(self._entries)


def replayed(issuer: str, jti: str) -> TokenError:
    """The refusal of a one-time jti seen before (every replay guard raises this one)."""
    return TokenError(f"replayed token: jti {jti[:80]!r} of issuer {issuer[:80]!r} was already used "
                      "and this policy allows each jti once")


class JtiReplayGuard:
    """Remembers each spent one-time jti until its token expires.

    When full of unexpired entries it refuses new one-time tokens (fails closed)
    rather than forget a spent jti, which would let it be replayed.
    """

    def __init__(self, max_entries: int = 1_000_000):
        self.max_entries = max_entries
        self._spent: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def check_unspent(self, issuer: str, jti: str, now: float) -> None:
        """TokenError if (issuer, jti) was spent and has not expired; spends nothing."""
        with self._lock:
            self._refuse_if_spent(issuer, jti, now)

    def spend(self, issuer: str, jti: str, forget_at: float, now: float) -> None:
        """Mark (issuer, jti) spent until ``forget_at``; TokenError if it already was."""
        key = (issuer, jti)
        with self._lock:
            self._refuse_if_spent(issuer, jti, now)
            if len(self._spent) >= self.max_entries:
                self._spent = {k: t for k, t in self._spent.items() if t > now}
                if len(self._spent) >= self.max_entries:
                    raise TokenError("one-time jti store is full of unexpired tokens; refusing one-time tokens "
                                     "until some expire (shorten token lifetimes or raise the limit)")
            self._spent[key] = forget_at

    def _refuse_if_spent(self, issuer: str, jti: str, now: float) -> None:
        forget_at = self._spent.get((issuer, jti))
        if forget_at is not None and forget_at > now:
            raise replayed(issuer, jti)

    def __len__(self) -> int:
        return len(self._spent)
