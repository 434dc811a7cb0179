"""The gateway's decision, offered to the gateways people already run.

- :class:`BastionAuthMiddleware`: an ASGI middleware for any Starlette/FastAPI-based
  server (BentoML, Ray Serve and MLServer are ASGI apps). Requests whose method and path
  map to an action (by default the Open Inference Protocol paths) need a bearer token the
  policy allows; the caller's identity is put in ``scope["state"]["bastion"]``
  (``request.state.bastion`` in Starlette).
- :func:`authz_decision`: the authorization endpoint (``/authz``) in the shape of nginx's
  ``auth_request`` and Envoy's HTTP ``ext_authz``. nginx forwards the original URI and method
  in ``X-Original-URI`` / ``X-Original-Method`` (and may name the action and model in the auth
  URL's query, which only its configuration controls); Envoy sends the original method
  and path after the ``/authz`` prefix. 2xx allows and carries ``X-Bastion-Subject``,
  ``X-Bastion-Issuer``, ``X-Bastion-Scope``; 401 and 403 deny. A rate-limited caller gets
  429 (Envoy passes it on), and 503 when the shared state cannot be checked; nginx only
  understands 401 and 403, so there both are 403 with ``Retry-After`` and ``X-Bastion-Status``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bastion.access.names import model_name_problem
from bastion.serving.auth import AuthOutcome, Authorizer, audit_fields, identity_headers
from bastion.serving.http import dumps, new_request_id, one_line

#: (method, path) -> (action, model) for a request that needs a token, or None for one that does not.
RouteMap = Callable[[str, str], "tuple[str, str | None] | None"]


OPEN_PATHS = frozenset({"/v2", "/v2/", "/v2/health/live", "/v2/health/ready", "/v2/openapi.json"})


def is_oip_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def oip_action(method: str, path: str) -> tuple[str, str | None] | None:
    """What an Open Inference Protocol request needs: ``predict`` on its model for ``/v2/models/...``,
    ``admin`` for every other ``/v2/...`` path (repository, and a server's other extensions), nothing
    for health and server metadata. A path outside ``/v2`` is not the protocol's: None."""
    if not is_oip_path(path) or path in OPEN_PATHS:
        return None
    parts = path.split("/")
    if parts[2] == "models":
        name = parts[3] if len(parts) > 3 else ""
        return "predict", name if name and model_name_problem(name) is None else None
    name = parts[4] if parts[2] == "repository" and len(parts) > 4 and parts[3] == "models" else ""
    return "admin", name if name and model_name_problem(name) is None else None


def client_address(scope: dict) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def authz_decision(authorizer: Authorizer, scope: dict, query: dict[str, str], forwarded_path: str,
                   request_id: str) -> tuple[AuthOutcome, dict[str, str], str | None, str | None]:
    """Decide a forwarded request; returns (outcome, response headers, action, model)."""
    original = header(scope, b"x-original-uri")
    nginx = original is not None
    if nginx:
        method = header(scope, b"x-original-method") or "GET"
        path = unquote(urlsplit(original).path)
        target = (query["action"], query.get("model")) if "action" in query else oip_action(method, path)
    else:
        method, path = scope["method"], "/" + forwarded_path.lstrip("/")
        target = oip_action(method, path)
    authorization = header(scope, b"authorization")
    address = client_address(scope)
    if target is None and is_oip_path(path):
        return AuthOutcome(200, "allowed: open path (no token needed)"), {"x-bastion-request-id": request_id}, None, None
    if target is None:
        outcome = authorizer.authorize(authorization, address, "predict", None)
        if outcome.status not in (401, 429):
            outcome = AuthOutcome(403, f"no action is known for {method} {path[:200]} (not an Open Inference "
                                       "Protocol path): name it on the auth URL, e.g. /authz?action=predict&model=M",
                                  outcome.decision)
    else:
        outcome = authorizer.authorize(authorization, address, target[0], target[1])
    headers = dict(outcome.headers or {})
    if outcome.allowed:
        headers.update(identity_headers(outcome, request_id))
    else:
        headers["x-bastion-request-id"] = request_id
        if nginx and outcome.status in (429, 503):
            headers["x-bastion-status"] = str(outcome.status)
            outcome = AuthOutcome(403, outcome.reason, outcome.decision, headers)
    return outcome, headers, target[0] if target else None, target[1] if target else None


class BastionAuthMiddleware:
    """Bearer-token authorization in front of any ASGI app, decided by a bastion policy.

    ``policy`` is a :class:`~bastion.access.policy.Policy`, a policy path or catalog name;
    ``routes`` maps (method, path) to (action, model) or None (no token needed).
    """

    def __init__(self, app, policy: Any = None, *, routes: RouteMap = oip_action, authorizer: Authorizer | None = None,
                 audit: Any = None):
        if authorizer is None:
            if isinstance(policy, (str, Path)):
                from bastion.access.policy_file import load_policy

                policy = load_policy(policy)
            if policy is None:
                raise ValueError("BastionAuthMiddleware needs a policy or an authorizer")
            authorizer = Authorizer(policy)
        self.app, self.routes, self.authorizer, self.audit = app, routes, authorizer, audit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            return await self._websocket(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        target = self.routes(scope["method"], scope["path"])
        if target is None:
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        request_id = new_request_id()
        action, model = target
        outcome = await self.authorizer.authorize_async(header(scope, b"authorization"), client_address(scope),
                                                        action, model)
        status = outcome.status
        try:
            if not outcome.allowed:
                body = dumps({"error": one_line(outcome.reason)})
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                           (b"x-request-id", request_id.encode())]
                headers += [(k.encode(), v.encode("latin-1", "replace")) for k, v in (outcome.headers or {}).items()]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            state = dict(scope.get("state") or {})
            state["bastion"] = {"request_id": request_id, "subject": outcome.subject, "issuer": outcome.issuer,
                                "scope": outcome.scope, "action": action, "model": model}
            scope = {**scope, "state": state}

            async def send_with_status(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            await self.app(scope, receive, send_with_status)
        finally:
            if self.audit is not None:
                self.audit.write({"request_id": request_id, "client": client_address(scope), "action": action,
                                  "model": model, "version": None, "status": status,
                                  "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                                  **audit_fields(outcome)})

    async def _websocket(self, scope, receive, send):
        """A websocket to a guarded path needs the same token; refused, the handshake is closed (403)."""
        target = self.routes("GET", scope["path"])
        if target is not None:
            outcome = await self.authorizer.authorize_async(header(scope, b"authorization"), client_address(scope),
                                                            *target)
            if not outcome.allowed:
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008})
                return
            scope = {**scope, "state": {**(scope.get("state") or {}), "bastion": {
                "subject": outcome.subject, "issuer": outcome.issuer, "scope": outcome.scope,
                "action": target[0], "model": target[1]}}}
        await self.app(scope, receive, send)
