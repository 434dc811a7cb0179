"""The serving gateway: Open Inference Protocol v2 over verified models, for authorized callers.

    from bastion.access.policy_file import load_policy
    from bastion.serving import Gateway, GatewayConfig, create_app

    gateway = Gateway(GatewayConfig(repository=Path("models"), policy=load_policy("gateway.toml")))
    gateway.load_models()          # verify and load; refusals are kept with their reasons
    app = create_app(gateway)      # the ASGI app; bastion.serving.server.run(gateway) serves it on uvicorn

Other ASGI servers can mount :class:`BastionAuthMiddleware`; nginx and Envoy can ask the
``/authz`` endpoint. Layout: ``app`` (wiring, in-flight cap), ``routes``, ``repository``
(discovery, verification, hot swap), ``auth`` (decisions, rate limits, failed-auth limits),
``state`` (the store behind them), ``batching``, ``inputs`` (OIP tensors), ``detector``,
``metrics``, ``audit``, ``middleware`` (ASGI middleware and /authz), ``openapi``, ``server``.
"""

from __future__ import annotations

_LAZY = {
    "Gateway": "bastion.serving.app",
    "GatewayConfig": "bastion.serving.app",
    "create_app": "bastion.serving.app",
    "BastionAuthMiddleware": "bastion.serving.middleware",
    "Authorizer": "bastion.serving.auth",
    "MemoryState": "bastion.serving.state",
    "SharedState": "bastion.serving.state",
    "AuditLog": "bastion.serving.audit",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bastion.serving' has no attribute {name!r}")
