"""Shared set-up for the serving tests (no tests here): keys, a signed repository, policies, live servers.

Everything expensive is built once per test process and cached: the keys, a repository
of zoo bundles (signed, attested, tampered...), and the main gateway on a real uvicorn
server on 127.0.0.1 (an ephemeral port). Tests that change what a server serves or how it
is limited start their own small one with :func:`start_server`.

The attestations carry a real benchmark report, ``tests/data/mnist-cnn-robust-quick-20.report.json``:
``bastion.evaluation.benchmark`` of the zoo's ``mnist-cnn-robust`` on the first 20 bundled MNIST
test images with the quick suite (FGSM + PGD-40 at Linf 0.3): clean 100%, robust 85%, no
indicator fired. It is recorded rather than rerun because PGD-40 takes seconds here.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import httpx
import numpy as np
import pytest

from bastion.access.attestation import attest_model
from bastion.access.keys import generate_private_key, write_keypair
from bastion.access.policy_file import load_policy
from bastion.access.signing import sign_model
from bastion.access.token_keys import thumbprint
from bastion.access.tokens import issue_token, new_jti
from bastion.data import load_data
from bastion.models.zoo import zoo_path

SRC = Path(__file__).resolve().parents[1] / "src"
REPORT = Path(__file__).parent / "data" / "mnist-cnn-robust-quick-20.report.json"
ISS = "https://auth.test"
AUD = "bastion-gateway"

POLICY = f"""
audience = "{AUD}"

[[issuers]]
iss = "{ISS}"
algorithm = "ES256"
key_file = "issuer.key.pub"

[scopes.predict]
actions = ["predict"]
models = ["*"]

[scopes.robust-only]
actions = ["predict"]
models = ["mnist-cnn-robust"]

[scopes.limited]
actions = ["predict"]
models = ["*"]

[scopes.admin]
actions = ["admin", "predict"]
models = ["*"]

[models]
signer_keys = ["signer.key.pub"]
attester_keys = ["attester.key.pub"]

[[models.rules]]
models = ["mnist-cnn-robust"]
require = "robust_accuracy[0.3] >= 0.8 and flags == 0"
detector = "flag"
detector_fpr = 0.05
calibration_samples = 50

[[models.rules]]
models = ["weak", "other-digest", "no-attestation"]
require = "robust_accuracy >= 0.95"

[[models.rules]]
models = ["rejecting"]
detector = "reject"
detector_fpr = 0.05
calibration_samples = 50

[[models.rules]]
models = ["plain", "sanitized", "unsigned", "tampered", "wrong-signer", "swap", "swap-*", "bench-*"]
max_batch = 32
max_delay_ms = 2

{{limits}}
"""

LIMITS = """
[limits]
max_in_flight = 64
max_body_bytes = 1048576
[limits.failed_auth]
rate = 100
burst = 1000
[limits.scopes.limited]
rate = 0.05
burst = 3
"""


@dataclass(frozen=True)
class World:
    root: Path
    repository: Path
    policy_path: Path
    issuer_key: object
    signer_key: object
    attester_key: object
    other_key: object


def copy_zoo(target: Path, zoo: str = "mnist-cnn") -> Path:
    shutil.copytree(zoo_path(zoo), target)
    return target


def signed_bundle(target: Path, key, zoo: str = "mnist-cnn") -> Path:
    copy_zoo(target, zoo)
    sign_model(target, key)
    return target


@lru_cache(maxsize=1)
def world() -> World:
    root = Path(tempfile.mkdtemp(prefix="bastion-serve-test-"))
    atexit.register(shutil.rmtree, root, True)
    keys = {}
    for name in ("issuer", "signer", "attester", "other"):
        keys[name] = generate_private_key("ec-p256")
        write_keypair(root / f"{name}.key", keys[name])
    repo = root / "models"
    repo.mkdir()
    report = json.loads(REPORT.read_text())
    signer, attester = keys["signer"], keys["attester"]

    robust = signed_bundle(repo / "mnist-cnn-robust", signer, "mnist-cnn-robust")
    attest_model(robust, report, attester)
    signed_bundle(repo / "plain", signer)
    signed_bundle(repo / "rejecting", signer)
    copy_zoo(repo / "unsigned")
    tampered = signed_bundle(repo / "tampered", signer)
    meta = tampered / "bastion.toml"
    meta.write_text(meta.read_text().replace('version = "1"', 'version = "2"'))
    signed_bundle(repo / "wrong-signer", keys["other"])
    weak = signed_bundle(repo / "weak", signer, "mnist-cnn-robust")
    attest_model(weak, report, attester)  # robust accuracy 0.85 < the rule's 0.95
    other = signed_bundle(repo / "other-digest", signer)
    shutil.copy(robust / "robustness.att.json", other / "robustness.att.json")  # attests another model's digest
    signed_bundle(repo / "no-attestation", signer)
    signed_bundle(repo / "swap" / "1", signer)
    from bastion.defenses.sanitizer import load_sanitizer, save_sanitized_bundle
    from bastion.models import load_model

    save_sanitized_bundle(load_model("mnist-cnn"), load_sanitizer("sanitize-bitdepth"), repo / "sanitized")
    sign_model(repo / "sanitized", signer)
    policy_path = root / "policy.toml"
    policy_path.write_text(POLICY.replace("{limits}", LIMITS))
    return World(root, repo, policy_path, keys["issuer"], signer, attester, keys["other"])


def write_policy(path: Path, limits: str = LIMITS) -> Path:
    path.write_text(POLICY.replace("{limits}", limits))
    return path


def token(sub: str = "alice", scope: str = "predict", *, ttl: float = 600, key=None, jti: str | None = None,
          **extra) -> str:
    key = key or world().issuer_key
    iss, aud, now = extra.pop("iss", ISS), extra.pop("aud", AUD), extra.pop("now", None)
    return issue_token(key, "ES256", iss=iss, aud=aud, sub=sub, ttl_seconds=ttl, scope=scope,
                       kid=thumbprint(key.public_key()), jti=jti or new_jti(), extra_claims=extra or None, now=now)


def bearer(text: str, **headers) -> dict[str, str]:
    return {"Authorization": f"Bearer {text}", **headers}


@lru_cache(maxsize=1)
def mnist_images() -> tuple[np.ndarray, np.ndarray]:
    test = load_data("mnist", "test")
    return test.x[:64].numpy(), test.y[:64].numpy()


def infer_body(rows: int = 1, *, offset: int = 0, datatype: str = "FP32", **extra) -> dict:
    x, _ = mnist_images()
    batch = x[offset:offset + rows]
    data = (np.round(batch * 255).astype(int) if datatype == "UINT8" else batch).reshape(-1).tolist()
    body = {"inputs": [{"name": "input", "shape": [rows, 1, 28, 28], "datatype": datatype, "data": data}]}
    body.update(extra)
    return body


class LiveServer:
    """A gateway on a real uvicorn server in a thread, on 127.0.0.1 and an ephemeral port."""

    def __init__(self, gateway):
        from bastion.serving.server import build_server

        self.gateway = gateway
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = build_server(gateway, log_level="error")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.gateway.close()

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 30), **kwargs)


def start_server(repository: Path | None = None, policy_path: Path | None = None, *,
                 audit_log: Path | None = None, **config) -> LiveServer:
    from bastion.serving.app import Gateway, GatewayConfig

    w = world()
    policy_path = policy_path or w.policy_path
    audit_log = audit_log or Path(tempfile.mkstemp(prefix="audit-", suffix=".jsonl", dir=w.root)[1])
    gateway = Gateway(GatewayConfig(repository=repository or w.repository, policy=load_policy(policy_path),
                                    audit_log=audit_log, **config))
    gateway.load_models()
    return LiveServer(gateway).start()


@lru_cache(maxsize=1)
def main_server() -> LiveServer:
    server = start_server()
    atexit.register(server.stop)
    return server


# Fixtures for the test modules that use the main server (import them by name).
@pytest.fixture(scope="module")
def server() -> LiveServer:
    return main_server()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def small_repository(name: str, *models: str) -> Path:
    """A fresh repository holding signed copies of the zoo's mnist-cnn under the given names."""
    w = world()
    repo = w.root / name
    repo.mkdir()
    for model in models:
        signed_bundle(repo / model, w.signer_key)
    return repo


def audit_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def wait_in_flight(url: str, count: int, timeout: float = 30) -> None:
    """Block until the server at ``url`` reports ``count`` requests in flight (its /metrics gauge)."""
    deadline = time.monotonic() + timeout
    while f"bastion_requests_in_flight {count:.1f}" not in httpx.get(url + "/metrics", timeout=10).text:
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} request(s) never got in flight")
        time.sleep(0.02)


def start_serve_process(args: list[str], log_path: Path, env: dict[str, str] | None = None
                        ) -> tuple[subprocess.Popen, int]:
    """``bastion serve ARGS`` as a real process (stdout and stderr to ``log_path``); (process, port) once listening."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    log = open(log_path, "w+")
    proc = subprocess.Popen([sys.executable, "-c", "from bastion.cli import main; main()", "serve", *args],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = log_path.read_text()
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", text)
        if found:
            return proc, int(found.group(1))
        if proc.poll() is not None:
            raise AssertionError(f"bastion serve exited {proc.returncode}: {text}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("bastion serve did not start")


REDIS_SERVER = shutil.which("redis-server") or next(
    (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if Path(p).exists()), None)
needs_redis = pytest.mark.skipif(REDIS_SERVER is None,
                                 reason="redis-server is not installed (apt-get install -y redis-server)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A throwaway redis-server on 127.0.0.1 (no persistence), in ``folder``; stop and start it at will."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        log = open(self.folder / "redis.log", "a")
        self.proc = subprocess.Popen([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.folder)],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(self.folder / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


def write_state_policy(path: Path, state: str, *, one_time: bool = False, limits: str = LIMITS) -> Path:
    """The serving tests' policy with ``state`` (a ``state = ...`` line or a ``[state]`` table) and one_time_jti."""
    header = f'audience = "{AUD}"\none_time_jti = {str(one_time).lower()}\n{state}\n'
    path.write_text(POLICY.replace("{limits}", limits).replace(f'audience = "{AUD}"', header, 1))
    return path
