"""The gateway: its parts wired together, and the ASGI app uvicorn runs.

Starlette, not FastAPI: on this machine Starlette answers ~10k req/s on a trivial endpoint
and FastAPI ~6.5k, and the gateway must keep 75% of a bare endpoint's throughput. The
OpenAPI document FastAPI would generate is written by hand instead
(:mod:`bastion.serving.openapi`) and a test keeps it equal to the routes.

Outermost is the in-flight cap (503 with ``Retry-After`` instead of an unbounded queue;
health and metrics are exempt so probes still answer under load), then the routes of
:mod:`bastion.serving.routes`.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette

from bastion.access.limits import Limits
from bastion.access.policy import Policy
from bastion.serving.audit import AuditLog
from bastion.serving.auth import Authorizer
from bastion.serving.http import dumps, new_request_id
from bastion.serving.metrics import GatewayMetrics
from bastion.serving.repository import LoadReport, ModelRepository
from bastion.serving.state import SharedState

log = logging.getLogger("bastion.serve")
EXEMPT_FROM_CAP = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})


@dataclass
class GatewayConfig:
    repository: Path
    policy: Policy
    audit_log: str | Path = "bastion-audit.jsonl"
    device: str = "cpu"
    #: Threads running forward passes (one model version runs one batch at a time).
    workers: int = max(1, min(4, os.cpu_count() or 1))
    #: Rate-limit buckets and spent one-time jti values; None: what the policy's ``state`` names.
    state: SharedState | None = None


class Gateway:
    """Policy, repository, authorizer, metrics and audit log of one running gateway."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.policy = config.policy
        self.limits: Limits = config.policy.limits or Limits()
        self.metrics = GatewayMetrics()
        self.audit = AuditLog(config.audit_log)
        self.authorizer = Authorizer(self.policy, state=config.state, limits=self.limits,
                                     on_state_error=self.metrics.state_error)
        self.state = self.authorizer.state
        if self.state.blocking:
            log.info("shared state: %s (rate limits and one-time jti shared by every replica using it)",
                     self.state.where)
        self.executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="bastion-infer")
        self.repository = ModelRepository(config.repository, self.policy.models, executor=self.executor,
                                          metrics=self.metrics, audit=self.audit, device=config.device)
        self.in_flight = 0
        self.draining = False
        self._closed = False

    def load_models(self) -> list[LoadReport]:
        """Verify and load every model in the repository (blocking; before the server starts)."""
        return self.repository.load_all()

    def close(self) -> None:
        """Flush the audit log and stop the worker threads (after the last request finished)."""
        if self._closed:
            return
        self._closed = True
        self.executor.shutdown(wait=True)
        self.authorizer.close()
        self.audit.close()


class InFlightCap:
    """ASGI wrapper: at most ``limit`` requests inside the app; the next gets 503 at once."""

    def __init__(self, app, gateway: Gateway):
        self.app, self.gateway = app, gateway
        self.limit = gateway.limits.max_in_flight
        self.gauge = gateway.metrics.in_flight

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in EXEMPT_FROM_CAP:
            return await self.app(scope, receive, send)
        gateway = self.gateway
        if gateway.in_flight >= self.limit:
            return await self._shed(scope, send)
        gateway.in_flight += 1
        self.gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            gateway.in_flight -= 1
            self.gauge.dec()

    async def _shed(self, scope, send) -> None:
        from bastion.serving.middleware import client_address, oip_action

        gateway = self.gateway
        gateway.metrics.shed.inc()
        request_id = new_request_id()
        reason = (f"server busy: {self.limit} requests in flight (limits.max_in_flight); retry shortly")
        target = oip_action(scope["method"], scope["path"])
        if target is not None:  # a protected request is accounted for even when it is turned away
            gateway.audit.write({"request_id": request_id, "client": client_address(scope), "action": target[0],
                                 "model": target[1], "version": None, "decision": "deny", "reason": reason,
                                 "status": 503, "latency_ms": 0.0})
        gateway.metrics.requests.labels("", "", "503").inc()
        body = dumps({"error": reason})
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"), (b"x-request-id", request_id.encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(gateway: Gateway):
    """The ASGI app serving ``gateway`` (models must already be loaded: see :meth:`Gateway.load_models`)."""
    from contextlib import asynccontextmanager

    from bastion.serving.routes import build_routes, exception_handlers

    @asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn calls this after the last in-flight request finished: nothing is cut short.
        gateway.close()

    app = Starlette(routes=build_routes(gateway), exception_handlers=exception_handlers(), lifespan=lifespan)
    app.state.gateway = gateway
    return InFlightCap(app, gateway)
