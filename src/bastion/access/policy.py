"""Access policies: may this caller's token do this action on this model? Deny unless a scope allows.

A ``Policy`` is built from a TOML file by ``bastion.access.policy_file.load_policy``
(or directly, in code). ``authorize(token, action, model)`` never raises, whatever
its arguments: it returns a ``Decision`` whose ``reason`` (at most
:data:`MAX_REASON_CHARS` characters) says why, either way, ready for an audit log.

The request is checked before the token: ``action`` must be an action name and
``model`` a model name (:mod:`bastion.access.names`) or None; anything else is
denied with a reason. ``model=None`` means an action on no particular model (such as
listing the models) and only a scope whose models include ``"*"`` grants it: a scope
limited to some models never reaches "no model in particular", which may mean all.
A scope's glob patterns match within one model name only.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from bastion.access.claims_cache import JtiReplayGuard, VerifiedClaimsCache, token_digest
from bastion.access.limits import Limits
from bastion.access.names import ANY_MODEL, model_matches, model_name_problem, model_pattern_problem
from bastion.access.scopes import scope_name_problem
from bastion.access.tokens import TokenVerifier, VerifiedToken
from bastion.errors import AccessDenied, ConfigError, TokenError

if TYPE_CHECKING:  # the models section's type only; model_trust is loaded by the policy file reader
    from bastion.access.model_trust import ModelsPolicy

ANY = "*"
MAX_REASON_CHARS = 300
_ACTION = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_SHOWN_SCOPES_CHARS = 120


def action_problem(action: Any) -> str | None:
    """Why ``action`` is not an action name (as requested, or as a policy lists it), or None."""
    if not issubclass(type(action), str):
        return f"an action must be a string, got {type(action).__name__[:40]}"
    if not _ACTION.fullmatch(action):
        return (f"{action[:80]!r} is not an action name (a lowercase letter, then up to 63 lowercase letters, "
                "digits, '_' or '-')")
    return None


def grant_problem(name: Any, actions: Any, models: Any) -> tuple[str, str] | None:
    """(field, problem) for the first thing wrong in a scope's definition, or None if it is sound."""
    problem = scope_name_problem(name)
    if problem:
        return "name", problem
    if not actions:
        return "actions", "list at least one action (e.g. predict, attack, train, admin, or \"*\")"
    for action in actions:
        problem = None if action == ANY else action_problem(action)
        if problem:
            return "actions", problem
    if not models:
        return "models", "list the models this scope reaches (names, glob patterns, or \"*\")"
    for pattern in models:
        problem = model_pattern_problem(pattern)
        if problem:
            return "models", problem
    return None


@dataclass(frozen=True)
class ScopeGrant:
    """What holding one scope allows: these actions, on models matching these names or patterns."""

    name: str
    actions: frozenset[str]
    models: tuple[str, ...]

    def __post_init__(self) -> None:
        problem = grant_problem(self.name, self.actions, self.models)
        if problem:
            raise ConfigError(f"scope {str(self.name)[:80]!r}: {problem[0]}: {problem[1]}")

    def allows(self, action: str, model: str | None) -> bool:
        """For an already validated request: ``action`` an action name, ``model`` a model name or None."""
        if action not in self.actions and ANY not in self.actions:
            return False
        if model is None:
            return ANY_MODEL in self.models
        return any(model_matches(pattern, model) for pattern in self.models)


def clip(reason: str) -> str:
    """A reason cut to :data:`MAX_REASON_CHARS`, so a hostile token cannot flood an audit log."""
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS - 3] + "..."


@dataclass(slots=True)
class Decision:
    """The answer to one request, with its reason (at most MAX_REASON_CHARS long), fit for an audit log."""

    allowed: bool
    reason: str
    action: str | None = None
    model: str | None = None
    token: VerifiedToken | None = None  # None when the token itself was rejected
    granted_by: str | None = None  # the scope that allowed the request

    def __post_init__(self) -> None:
        self.reason = clip(self.reason)

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


def _plain_text(value: Any) -> Any:
    """A ``str`` subclass as a plain ``str`` (so no overridden ``__eq__`` or ``__hash__`` runs), else as is."""
    return str.__str__(value) if issubclass(type(value), str) else value


def _request_problem(action: Any, model: Any) -> str | None:
    return action_problem(action) or (None if model is None else model_name_problem(model))


def _target(model: str | None) -> str:
    return " on no particular model" if model is None else f" on model {model!r}"


def _held(scopes: tuple[str, ...]) -> str:
    listed = ", ".join(scopes)
    if len(listed) <= _SHOWN_SCOPES_CHARS:
        return f"token scopes: {listed or 'none'}"
    shown = listed[:_SHOWN_SCOPES_CHARS].rsplit(", ", 1)[0]
    return f"token holds {len(scopes)} scopes: {shown}, ..."


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
    #: What extra policy sections (see policy_file.SECTIONS) read, by section name.
    sections: dict[str, Any] = field(default_factory=dict)

    @property
    def models(self) -> ModelsPolicy | None:
        """The ``[models]`` section: which models may be served or loaded; None when the policy has none."""
        return self.sections.get("models")

    @property
    def limits(self) -> Limits:
        """The ``[limits]`` section (its defaults when the policy has none)."""
        return self.sections.get("limits") or Limits()

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

    def authorize(self, token: Any, action: Any, model: Any = None) -> Decision:
        """Allow ``action`` on ``model`` only if a scope grants it; never raises (see the module docstring)."""
        action, model = _plain_text(action), _plain_text(model)
        problem = _request_problem(action, model)
        if problem:
            shown_action = action[:80] if type(action) is str else None
            shown_model = model[:130] if type(model) is str else None
            return Decision(False, f"denied: bad request: {problem}", shown_action, shown_model)
        try:
            verified = self._verify(token, spend=False)
        except TokenError as exc:
            return Decision(False, f"denied: token rejected: {exc}", action, model)
        for name in verified.scopes:
            grant = self.scopes.get(name)
            if grant is not None and grant.allows(action, model):
                break
        else:
            needs = ', which only a scope with models = ["*"] grants' if model is None else ""
            return Decision(False, f"denied: no scope held grants {action!r}{_target(model)}{needs} "
                                   f"({_held(verified.scopes)})", action, model, verified)
        if self.one_time_jti:
            try:
                self._spend(verified)
            except TokenError as exc:
                return Decision(False, f"denied: token rejected: {exc}", action, model, verified)
        return Decision(True, f"allowed: scope {name!r} grants {action!r}{_target(model)} to "
                              f"{verified.subject[:80]!r} of issuer {verified.issuer[:80]!r}",
                        action, model, verified, name)

    def _verify(self, token: Any, spend: bool) -> VerifiedToken:
        text = self.verifier.check_shape(token)  # the size limit comes before hashing too
        if self.cache is None:
            verified = self._verify_fresh(text)
        else:
            digest = token_digest(text)
            verified = self.cache.get(digest)
            if verified is not None and not self.verifier.still_trusted(verified):
                # The key that verified it left the issuer's set or was rotated: verify afresh.
                self.cache.discard(digest)
                verified = None
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
            else:
                self.replay_guard.check_unspent(verified.issuer, verified.jti, self.clock())
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
