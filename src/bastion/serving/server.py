"""Run a gateway on uvicorn, and drain it on SIGTERM.

On SIGTERM (or SIGINT) uvicorn stops accepting connections, closes idle keep-alive
connections and waits for every request in flight to finish; then the app's lifespan
shutdown flushes the audit log. ``run`` returns normally, so ``bastion serve`` exits 0
after a SIGTERM. While draining, ``/v2/health/ready`` answers 503 so a load balancer
stops sending traffic.
"""

from __future__ import annotations

import logging
import signal
import socket

import uvicorn

from bastion.serving.app import Gateway, create_app

log = logging.getLogger("bastion.serve")


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, gateway: Gateway):
        super().__init__(config)
        self.gateway = gateway

    def handle_exit(self, sig, frame) -> None:
        self.gateway.draining = True
        super().handle_exit(sig, frame)


def uvicorn_config(gateway: Gateway, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "warning",
                   forwarded_allow_ips: str = "127.0.0.1") -> uvicorn.Config:
    # access_log off: the audit log records every protected request, off the request path;
    # uvicorn's synchronous access log would halve throughput.
    return uvicorn.Config(create_app(gateway), host=host, port=port, log_level=log_level, access_log=False,
                          lifespan="on", proxy_headers=True, forwarded_allow_ips=forwarded_allow_ips,
                          server_header=False, timeout_keep_alive=30)


def build_server(gateway: Gateway, **kwargs) -> uvicorn.Server:
    return _DrainingServer(uvicorn_config(gateway, **kwargs), gateway)


def run(gateway: Gateway, *, sock: socket.socket | None = None, **kwargs) -> None:
    """Serve until SIGTERM/SIGINT, then drain; blocks. The gateway is closed on return."""
    server = build_server(gateway, **kwargs)
    # uvicorn re-raises the signal it stopped on once it has shut down; a no-op handler makes a
    # drained SIGTERM an ordinary return (exit status 0) instead of death by signal.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock] if sock is not None else None)
    finally:
        signal.signal(signal.SIGTERM, previous)
        gateway.close()
