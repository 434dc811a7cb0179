"""Access policies: may this caller's token do this action on this model? Deny unless a scope allows.

A ``Policy`` is built from a TOML file by ``bastion.access.policy_file.load_policy``
(or directly, in code). ``authorize(token, action, model)`` never raises for
a bad token or a refused request: it returns a ``Decision`` whose ``reason``
says why, either way, ready for an audit log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Callable

from bastion.access.claims_cache import JtiReplayGuard, VerifiedClaimsCache, token_digest
from bastion.access.tokens import TokenVerifier, VerifiedToken
from bastion.errors import AccessDenied, TokenError

ANY = "*"


@dataclass(frozen=True)
class ScopeGrant:
    """What holding one scope allows: these actions, on models matching these names or patterns."""

    name: str
    actions: frozenset[str]
    models: tuple[str, ...]

    def allows(self, action: str, model: str | None) -> bool:
        if action not in self.actions and ANY not in self.actions:
            return False
        if model is None or model in self.models or ANY in self.models:
            return True
        return any(fnmatchcase(model, pattern) for pattern in self.models)


@dataclass(slots=True)
class Decision:
    """The answer to one request, with its reason, fit for an audit log."""

    allowed: bool
    reason: str
    action: str | None = None
    model: str | None = None
    token: VerifiedToken | None = None  # None when the token itself was rejected
    granted_by: str | None = None  # the scope that allowed the request

    @property
    def subject(self) -> str | None:
        return self.token.subject if self.token else None

    def to_dict(self) -> dict[str, Any]:
        token = self.token
        return {"allowed": self.allowed, "reason": self.reason, "action": self.action, "model": self.model,
                "subject": token.subject if token else None, "issuer": token.issuer if token else None,
                "jti": token.jti if token else None, "kid": token.kid if token else None,
                "scopes": list(token.scopes) if token else [], "granted_by": self.granted_by,
                "expires_at": token.expires_at if token else None}

    def raise_if_denied(self) -> None:
        if not self.allowed:
            raise AccessDenied(self.reason)


@dataclass
class Policy:
    """Token verification plus the rules on top: revocation, one-time jti, scopes."""

    verifier: TokenVerifier
    scopes: dict[str, ScopeGrant]
    revoked_jti: set[str] = field(default_factory=set)
    revoked_subjects: set[str] = field(default_factory=set)
    one_time_jti: bool = False
    cache_size: int = 10_000
    source: str = "<policy>"
    clock: Callable[[], float] = time.time
    models: Any = None  # the [models] section: a bastion.access.model_trust.ModelsPolicy, or None
    limits: Any = None  # the [limits] section: a bastion.access.limits.Limits

    def __post_init__(self) -> None:
        self.cache = VerifiedClaimsCache(self.cache_size) if self.cache_size > 0 else None
        self.replay_guard = JtiReplayGuard()

    def revoke(self, *, jti: str | None = None, subject: str | None = None) -> None:
        """Revoke at run time; cached tokens are re-checked on every hit, so this takes effect at once."""
        if jti is not None:
            self.revoked_jti.add(jti)
        if subject is not None:
            self.revoked_subjects.add(subject)

    def verify(self, token: Any) -> VerifiedToken:
        """The verified token, or TokenError with the reason (a one-time jti is spent here)."""
        return self._verify(token, spend=True)

    def authorize(self, token: Any, action: str, model: str | None = None) -> Decision:
        """Allow ``action`` on ``model`` (None: an action on no particular model) only if a scope grants it."""
        try:
            verified = self._verify(token, spend=False)
        except TokenError as exc:
            return Decision(False, f"denied: token rejected: {exc}", action, model)
        target = "" if model is None else f" on model {model!r}"
        for name in verified.scopes:
            grant = self.scopes.get(name)
            if grant is not None and grant.allows(action, model):
                break
        else:
            held = ", ".join(verified.scopes) or "none"
            return Decision(False, f"denied: no scope held grants {action!r}{target} (token scopes: {held})",
                            action, model, verified)
        if self.one_time_jti:
            try:
                self._spend(verified)
            except TokenError as exc:
                return Decision(False, f"denied: token rejected: {exc}", action, model, verified)
        return Decision(True, f"allowed: scope {name!r} grants {action!r}{target} to {verified.subject!r} "
                              f"of issuer {verified.issuer!r}", action, model, verified, name)

    def _verify(self, token: Any, spend: bool) -> VerifiedToken:
        text = self.verifier.check_shape(token)  # the size limit comes before hashing too
        if self.cache is None:
            verified = self._verify_fresh(text)
        else:
            digest = token_digest(text)
            verified = self.cache.get(digest)
            if verified is None:
                verified = self._verify_fresh(text)
                self.cache.put(digest, verified)
            else:
                # A cache hit skipped the signature, not the rules that change with time.
                leeway = self.verifier.rules.leeway_seconds
                if verified.expires_at <= self.clock() - leeway:
                    self.cache.discard(digest)
                    raise TokenError(f"token has expired (exp is in the past, beyond the {leeway:g} s leeway)")
                self._check_revoked(verified)
        if self.one_time_jti:
            if spend:
                self._spend(verified)
            elif self.replay_guard.is_spent(verified.issuer, verified.jti, self.clock()):
                self._spend(verified)  # raises the replay error
        return verified

    def _verify_fresh(self, text: str) -> VerifiedToken:
        verified = self.verifier.verify_shaped(text)
        if self.one_time_jti and verified.jti is None:
            raise TokenError("this policy allows each token once and needs a jti claim, which the token lacks")
        self._check_revoked(verified)
        return verified

    def _spend(self, verified: VerifiedToken) -> None:
        now = self.clock()
        forget_at = verified.expires_at + self.verifier.rules.leeway_seconds
        self.replay_guard.spend(verified.issuer, verified.jti, forget_at, now)

    def _check_revoked(self, verified: VerifiedToken) -> None:
        if not (self.revoked_jti or self.revoked_subjects):
            return
        if verified.jti is not None and verified.jti in self.revoked_jti:
            raise TokenError(f"token revoked: jti {verified.jti[:80]!r} is on this policy's revocation list")
        if verified.subject in self.revoked_subjects:
            raise TokenError(f"token revoked: subject {verified.subject[:80]!r} is on this policy's revocation list")
