"""Shared helpers for the token, policy and JWKS tests (no tests here)."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt

from bastion.access.keys import generate_private_key, write_keypair
from bastion.access.policy_file import load_policy
from bastion.access.token_keys import thumbprint

ISS = "https://auth.example.com"
AUD = "bastion-gateway"

_KEY_CACHE: dict[str, object] = {}


def private_key(key_type: str, slot: int = 0):
    """Keys are slow to make (RSA): reuse one per (type, slot) across tests."""
    name = f"{key_type}/{slot}"
    if name not in _KEY_CACHE:
        _KEY_CACHE[name] = generate_private_key(key_type)
    return _KEY_CACHE[name]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def malleate(token: str) -> str:
    """The (r, n - s) twin of an ES256 token: a different string with the same claims, also valid."""
    head, payload, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "==")
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    twin = r.to_bytes(32, "big") + (n - s).to_bytes(32, "big")
    return f"{head}.{payload}.{b64(twin)}"


def claims(**overrides) -> dict:
    now = int(time.time())
    base = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 600, "jti": "jti-1",
            "scope": "predict"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict, key, algorithm: str = "ES256", headers: dict | None = None) -> str:
    """Sign exactly this header and payload (PyJWT's encode would refuse some of the bad ones)."""
    header = {"alg": algorithm, "typ": "JWT", **(headers or {})}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signer = jwt.algorithms.get_default_algorithms()[algorithm]
    return f"{signing_input}.{b64(signer.sign(signing_input.encode(), signer.prepare_key(key)))}"


def forge(header: dict, payload: dict, signature: bytes = b"sig") -> str:
    """A token with whatever header and payload, and an arbitrary signature."""
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)])


def write_policy(folder: Path, body: str, name: str = "policy.toml") -> Path:
    path = folder / name
    path.write_text(body)
    return path


def es256_policy(folder: Path, extra: str = "", scopes: str | None = None, key_slot: int = 0,
                 issuer_extra: str = ""):
    """(policy, private key, policy path) for one ES256 issuer whose key lives in ``folder``."""
    key = private_key("ec-p256", key_slot)
    key_path = folder / f"issuer{key_slot}.key"
    if not key_path.exists():
        write_keypair(key_path, key)
    scopes = scopes if scopes is not None else SCOPES
    path = write_policy(folder, f"""
audience = "{AUD}"
{extra}

[[issuers]]
iss = "{ISS}"
algorithm = "ES256"
key_file = "{key_path.name}.pub"
{issuer_extra}
{scopes}
""")
    return load_policy(path), key, path


SCOPES = """
[scopes.predict]
actions = ["predict"]
models = ["mnist-cnn"]

[scopes.redteam]
actions = ["predict", "attack"]
models = ["mnist-*"]
"""


def kid_of(key) -> str:
    return thumbprint(key.public_key())


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 in a thread, counting requests; ``body``/``status``/``delay`` can change.

    ``delay`` seconds pass between a request's arrival (counted at once) and the answer: a slow key server.
    """

    def __init__(self, body: dict | bytes | None = None, status: int = 200):
        self.body = body if body is not None else {"keys": []}
        self.status = status
        self.delay = 0.0
        self.requests = 0
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's hook name
                server.requests += 1
                server.paths.append(self.path)
                if server.delay:
                    time.sleep(server.delay)
                data = server.body if isinstance(server.body, bytes) else json.dumps(server.body).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
