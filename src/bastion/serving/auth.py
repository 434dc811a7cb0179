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

The buckets and spent one-time jti values live in a :class:`SharedState`. When it cannot
answer (a shared Redis down), the request is refused with 503 and ``Retry-After``; the
policy's ``[state] on_error = "open"`` lets requests past the rate limits instead, never
past the one-time-jti check. With a state that waits on a network, callers on an event
loop use :meth:`Authorizer.authorize_async`, which decides in a thread (also when an issuer's keys
come from a JWKS URL, whose refetch for an unknown kid waits on the key server).
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from bastion.access.claims_cache import token_digest
from bastion.access.limits import Limits
from bastion.access.policy import Decision, Policy
from bastion.access.shared_state_config import state_config
from bastion.errors import BastionError, ServiceUnavailable, TokenError
from bastion.serving.state import SharedState, StateReplayGuard, open_state, retry_after_header

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
    """Decisions for one policy. ``state``: the buckets and spent jti values; by default the store the
    policy's ``state`` key names (opened here, closed by :meth:`close`; ``on_state_error(operation)``
    hears of each operation it fails)."""

    def __init__(self, policy: Policy, *, state: SharedState | None = None, limits: Limits | None = None,
                 clock: Callable[[], float] = time.time, on_state_error: Callable[[str], None] | None = None):
        self.policy = policy
        settings = state_config(policy)
        self._owns_state = state is None
        self.state = state or open_state(settings, policy.verifier.rules.audience, on_error=on_state_error)
        self.limits = limits or policy.limits or Limits()
        self.clock = clock
        self.rate_limits_fail_open = settings.rate_limits_fail_open
        #: Whether requests are refused while the state cannot answer (not so only if nothing needs it).
        self.needs_state = policy.one_time_jti or not self.rate_limits_fail_open
        if policy.one_time_jti:  # one-time jti values live in the shared state too, so replicas agree
            policy.replay_guard = StateReplayGuard(self.state)
        # Threads that wait on a network (the shared state's, or a key server's JWKS refetch) for the
        # event loop; idle ones cost nothing. With a JWKS URL every decision hops, cached tokens too:
        # a cache hit re-checks its key against the set, and the first check after the set's TTL
        # refetches it in the calling thread.
        self._threads = ThreadPoolExecutor(max_workers=32, thread_name_prefix="bastion-state") \
            if self.state.blocking or policy.verifier.fetches_keys else None

    async def authorize_async(self, authorization: str | None, client: str, action: str,
                              model: str | None) -> AuthOutcome:
        """:meth:`authorize` for a caller on an event loop, which it never blocks."""
        return await self.off_loop(self.authorize, authorization, client, action, model)

    async def off_loop(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)``, in a thread when the state or the key source waits on a network, else here."""
        if self._threads is None:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self._threads, function, *args)

    def close(self) -> None:
        """Stop the state threads and let go of a state this authorizer opened."""
        if self._threads is not None:
            self._threads.shutdown(wait=True)
        if self._owns_state:
            self.state.close()

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
        try:
            budget_left, wait = self.state.peek(fail_key, failed.rate, failed.burst, now)
        except ServiceUnavailable as exc:
            if not self.rate_limits_fail_open:
                return unavailable(exc, "the failed-authentication limit")
            budget_left = True
        if not budget_left and not self._cached(token):
            return AuthOutcome(429, f"too many failed authentications from {client}; retry in "
                                    f"{retry_after_header(wait)} s", headers={"retry-after": retry_after_header(wait)})
        try:
            decision = self.policy.authorize(token, action, model)
        except ServiceUnavailable as exc:  # the one-time-jti check: never fails open
            return unavailable(exc, "the one-time jti")
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
            try:
                allowed, wait = self.state.take(key, rate.rate, rate.burst, now)
            except ServiceUnavailable as exc:
                if not self.rate_limits_fail_open:
                    return unavailable(exc, "the caller's rate limit", decision)
                allowed = True  # on_error = "open": counted and logged by the state, not enforced
            if not allowed:
                return AuthOutcome(429, f"rate limited: {verified.subject!r} may send {rate.rate:g} requests/s "
                                        f"(burst {rate.burst:g}) under scope {decision.granted_by!r}; retry in "
                                        f"{retry_after_header(wait)} s", decision,
                                   headers={"retry-after": retry_after_header(wait)})
        return AuthOutcome(200, decision.reason.removeprefix("allowed: "), decision)

    def _failed(self, client: str, reason: str, decision: Decision | None = None) -> AuthOutcome:
        failed = self.limits.failed_auth
        try:
            self.state.take(f"fail\x00{client}", failed.rate, failed.burst, self.clock())
        except ServiceUnavailable:
            pass  # refused anyway; the state counted and logged its failure
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


def unavailable(exc: ServiceUnavailable, needed: str, decision: Decision | None = None) -> AuthOutcome:
    """503: the state that ``needed`` lives in cannot answer, so the request is refused (fail closed)."""
    wait = retry_after_header(exc.retry_after)
    return AuthOutcome(503, f"{exc}: {needed} cannot be checked, so the request is refused; retry in {wait} s",
                       decision, headers={"retry-after": wait})


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
