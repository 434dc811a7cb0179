"""Who may ask: bearer tokens decided by the policy, per-caller rate limits, and failed-auth limiting.

One :class:`Authorizer` answers for the gateway, the ASGI middleware and the
authorization endpoint alike. Per request, in order of cost:

1. No ``Authorization: Bearer`` credentials: 401 with ``WWW-Authenticate: Bearer
   realm="bastion"`` (RFC 6750 3.1: no error code when no credentials were sent).
2. The cheap shape checks (size, ASCII, three segments) of the policy's verifier.
3. If this client address has used up its failed-authentication budget, only a token
   already in the policy's verified-claims cache goes further; any other gets 429 without
   any signature verification. A flood of forged tokens costs its sender, not the others.
4. The policy decides (signature, claims, revocation, scopes): a rejected token is 401
   ``error="invalid_token"`` and is charged to the address; a valid token without the
   scope is 403 ``error="insufficient_scope"``.
5. The per-caller bucket (issuer + subject) of the scope that granted the request: 429
   with ``Retry-After`` when it is empty.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from bastion.access.claims_cache import token_digest
from bastion.access.limits import Limits
from bastion.access.policy import Decision, Policy
from bastion.errors import BastionError, TokenError
from bastion.serving.state import MemoryState, SharedState, StateReplayGuard, retry_after_header

REALM = 'Bearer realm="bastion"'
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9._~+/-]+=*) *")
_HEADER_UNSAFE = re.compile(r'[^\x20-\x21\x23-\x5b\x5d-\x7e]')


@dataclass(slots=True)
class AuthOutcome:
    """The answer for one request: ``status`` 200 allows; anything else is the refusal to send."""

    status: int
    reason: str
    decision: Decision | None = None
    headers: dict[str, str] | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 200

    def _token_field(self, name: str) -> str | None:
        token = self.decision.token if self.decision else None
        return getattr(token, name) if token else None

    issuer = property(lambda self: self._token_field("issuer"))
    subject = property(lambda self: self._token_field("subject"))
    jti = property(lambda self: self._token_field("jti"))

    @property
    def scope(self) -> str | None:
        return self.decision.granted_by if self.decision else None


class Authorizer:
    def __init__(self, policy: Policy, *, state: SharedState | None = None, limits: Limits | None = None,
                 clock: Callable[[], float] = time.time):
        self.policy = policy
        self.state = state or MemoryState()
        self.limits = limits or policy.limits or Limits()
        self.clock = clock
        if policy.one_time_jti:  # one-time jti values live in the shared state too, so replicas agree
            policy.replay_guard = StateReplayGuard(self.state)

    def authorize(self, authorization: str | None, client: str, action: str, model: str | None) -> AuthOutcome:
        if not authorization:
            return AuthOutcome(401, "no bearer token (send Authorization: Bearer <token>)", headers={
                "www-authenticate": REALM})
        match = _BEARER.fullmatch(authorization)
        if match is None:
            if not authorization.lower().startswith("bearer"):
                return AuthOutcome(401, "no bearer token (the Authorization header is not Bearer credentials)",
                                   headers={"www-authenticate": REALM})
            return self._failed(client, "token rejected: the Authorization header is not 'Bearer <token>'")
        token = match.group(1)
        now = self.clock()
        failed = self.limits.failed_auth
        fail_key = f"fail\x00{client}"
        budget_left, wait = self.state.peek(fail_key, failed.rate, failed.burst, now)
        if not budget_left and not self._cached(token):
            return AuthOutcome(429, f"too many failed authentications from {client}; retry in "
                                    f"{retry_after_header(wait)} s", headers={"retry-after": retry_after_header(wait)})
        try:
            decision = self.policy.authorize(token, action, model)
        except BastionError as exc:  # authorize answers with a Decision; this only guards the promise
            return self._failed(client, f"token rejected: {exc}")
        if not decision.allowed:
            if decision.token is None:
                return self._failed(client, decision.reason.removeprefix("denied: "), decision)
            return AuthOutcome(403, decision.reason.removeprefix("denied: "), decision, headers={
                "www-authenticate": f'{REALM}, error="insufficient_scope"'})
        rate = self.limits.for_scope(decision.granted_by)
        if rate is not None:
            verified = decision.token
            key = f"rate\x00{verified.issuer}\x00{verified.subject}\x00{decision.granted_by}"
            allowed, wait = self.state.take(key, rate.rate, rate.burst, now)
            if not allowed:
                return AuthOutcome(429, f"rate limited: {verified.subject!r} may send {rate.rate:g} requests/s "
                                        f"(burst {rate.burst:g}) under scope {decision.granted_by!r}; retry in "
                                        f"{retry_after_header(wait)} s", decision,
                                   headers={"retry-after": retry_after_header(wait)})
        return AuthOutcome(200, decision.reason.removeprefix("allowed: "), decision)

    def _failed(self, client: str, reason: str, decision: Decision | None = None) -> AuthOutcome:
        failed = self.limits.failed_auth
        self.state.take(f"fail\x00{client}", failed.rate, failed.burst, self.clock())
        description = _HEADER_UNSAFE.sub("", reason)[:200]
        return AuthOutcome(401, reason, decision, headers={
            "www-authenticate": f'{REALM}, error="invalid_token", error_description="{description}"'})

    def _cached(self, token: str) -> bool:
        cache = self.policy.cache
        if cache is None:
            return False
        try:
            text = self.policy.verifier.check_shape(token)
        except TokenError:
            return False
        return cache.get(token_digest(text)) is not None


def identity_headers(outcome: AuthOutcome, request_id: str) -> dict[str, str]:
    """The caller's identity for an upstream, as an auth endpoint returns it (header-safe values)."""
    headers = {"x-bastion-request-id": request_id}
    for name, value in (("x-bastion-subject", outcome.subject), ("x-bastion-issuer", outcome.issuer),
                        ("x-bastion-scope", outcome.scope)):
        if value is not None:
            headers[name] = _HEADER_UNSAFE.sub("?", value)[:256]
    return headers


def audit_fields(outcome: AuthOutcome) -> dict[str, Any]:
    from bastion.serving.audit import jti_hash

    return {"issuer": outcome.issuer, "subject": outcome.subject, "jti_sha256": jti_hash(outcome.jti),
            "scope": outcome.scope, "decision": "allow" if outcome.allowed else "deny", "reason": outcome.reason}
