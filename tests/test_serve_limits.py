"""Limits under load: failed authentications per address, the in-flight cap, the audit log's line count,
dynamic batching, and one-time tokens through the shared state."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time

import httpx
import pytest

from bastion.access.policy_file import load_policy
from bastion.serving.auth import Authorizer
from bastion.serving.state import MemoryState
from serve_helpers import (audit_lines, bearer, infer_body, small_repository, start_server, token, wait_in_flight,
                           world, write_policy)

TIGHT = """
[limits]
max_in_flight = 2
max_body_bytes = 1048576
[limits.failed_auth]
rate = 0.01
burst = 3
"""


@pytest.fixture(scope="module")
def tight():
    repo = small_repository("repo-tight", "plain")
    server = start_server(repo, write_policy(world().root / "tight.toml", TIGHT))
    yield server
    server.stop()


def test_failed_authentications_are_limited_per_address_before_any_signature_check(tight):
    from bastion.access.keys import generate_private_key

    verifier = tight.gateway.policy.verifier
    calls = []
    original = verifier.verify_shaped
    verifier.verify_shaped = lambda text: (calls.append(text), original(text))[1]
    good, other_good = token("heidi"), token("ivan")
    forged = token("mallory", key=generate_private_key("ec-p256"))
    attacker, bystander = {"X-Forwarded-For": "203.0.113.9"}, {"X-Forwarded-For": "198.51.100.4"}
    try:
        with tight.client() as client:
            assert client.get("/v2/models/plain/ready", headers=bearer(good, **attacker)).status_code == 200
            codes = [client.get("/v2/models/plain/ready", headers=bearer(forged, **attacker)).status_code
                     for _ in range(5)]
            assert codes == [401, 401, 401, 429, 429]
            checked = len(calls)
            limited = client.get("/v2/models/plain/ready", headers=bearer(forged, **attacker))
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
            assert "too many failed authentications from 203.0.113.9" in limited.json()["error"]
            # An unverified token from the limited address is refused without reaching the signature check...
            assert client.get("/v2/models/plain/ready", headers=bearer(other_good, **attacker)).status_code == 429
            assert len(calls) == checked
            # ...a caller whose token was verified before keeps working, and other addresses are untouched.
            assert client.get("/v2/models/plain/ready", headers=bearer(good, **attacker)).status_code == 200
            assert client.get("/v2/models/plain/ready", headers=bearer(forged, **bystander)).status_code == 401
            assert client.get("/v2/models/plain/ready", headers=bearer(other_good, **bystander)).status_code == 200
            assert re.search(r'bastion_auth_denials_total\{reason="address_limited"\} [3-9]',
                             client.get("/metrics").text)
    finally:
        verifier.verify_shaped = original


def test_in_flight_cap_answers_503_instead_of_queueing(tight):
    auth = bearer(token("judy"))
    body = json.dumps(infer_body()).encode()
    head = (f"POST /v2/models/plain/infer HTTP/1.1\r\nHost: x\r\nAuthorization: {auth['Authorization']}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    stalled = [socket.create_connection(("127.0.0.1", tight.port), timeout=30) for _ in range(2)]
    try:
        for sock in stalled:
            sock.sendall(head + body[:10])  # in flight: authorized, waiting for the rest of the body
        wait_in_flight(tight.url, 2)
        with tight.client() as client:
            busy = client.post("/v2/models/plain/infer", json=infer_body(), headers=auth)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert "2 requests in flight" in busy.json()["error"]
            assert client.get("/v2/health/ready").status_code == 200  # probes are never shed
            assert "bastion_requests_in_flight 2.0" in client.get("/metrics").text
            for sock in stalled:
                sock.sendall(body[10:])
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            assert client.post("/v2/models/plain/infer", json=infer_body(), headers=auth).status_code == 200
    finally:
        for sock in stalled:
            sock.close()


def test_audit_line_count_equals_requests_under_concurrent_load_and_requests_are_batched(tmp_path):
    repo = small_repository("repo-load", "plain")
    audit = tmp_path / "audit.jsonl"
    server = start_server(repo, audit_log=audit)
    good, bad = token("kim"), "Bearer x.y.z"
    total = 200

    async def one(client, i):
        headers = {"Authorization": bad} if i % 10 == 9 else bearer(good)
        response = await client.post("/v2/models/plain/infer", json=infer_body(1, offset=i % 64), headers=headers)
        return response.status_code

    async def load():
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
            return await asyncio.gather(*(one(client, i) for i in range(total)))

    try:
        codes = asyncio.run(load())
        metrics = httpx.get(server.url + "/metrics").text
    finally:
        server.stop()  # drains and flushes the audit log
    assert codes.count(200) == 180 and codes.count(401) == 20
    records = [r for r in audit_lines(audit) if "request_id" in r]
    assert len(records) == total
    assert len({r["request_id"] for r in records}) == total
    assert sum(r["decision"] == "deny" for r in records) == 20
    batches = float(re.search(r'bastion_inference_batch_size_count\{model="plain",version="1"\} (\S+)', metrics)[1])
    rows = float(re.search(r'bastion_inference_batch_size_sum\{model="plain",version="1"\} (\S+)', metrics)[1])
    assert rows == 180 and batches < rows  # concurrent requests shared forward passes


def test_one_time_tokens_are_spent_in_the_shared_state(tmp_path):
    path = write_policy(tmp_path / "once.toml", "")
    path.write_text(path.read_text().replace('audience = "bastion-gateway"',
                                             'audience = "bastion-gateway"\none_time_jti = true'))
    (tmp_path / "issuer.key.pub").write_bytes((world().root / "issuer.key.pub").read_bytes())
    for name in ("signer", "attester"):
        (tmp_path / f"{name}.key.pub").write_bytes((world().root / f"{name}.key.pub").read_bytes())
    state = MemoryState()
    authorizer = Authorizer(load_policy(path), state=state)
    text = token("lee", jti="once-1")
    assert authorizer.authorize(f"Bearer {text}", "10.0.0.1", "predict", "plain").status == 200
    replay = authorizer.authorize(f"Bearer {text}", "10.0.0.1", "predict", "plain")
    assert replay.status == 401 and "replayed token" in replay.reason
    # A second gateway sharing the same state refuses the replay too.
    other = Authorizer(load_policy(path), state=state)
    assert other.authorize(f"Bearer {text}", "10.0.0.2", "predict", "plain").status == 401


def test_memory_state_token_bucket():
    state = MemoryState()
    assert [state.take("k", 1.0, 2, 100.0)[0] for _ in range(3)] == [True, True, False]
    allowed, wait = state.take("k", 1.0, 2, 100.0)
    assert not allowed and 0.99 < wait <= 1.0
    assert state.take("k", 1.0, 2, 101.0)[0] and state.peek("k", 1.0, 2, 101.0) == (False, pytest.approx(1.0))
    assert state.spend_once("j", 10, 0.0) and not state.spend_once("j", 10, 5.0) and state.spend_once("j", 10, 11.0)


def test_an_unwritable_audit_log_fails_closed_and_loses_nothing(tight):
    import errno

    audit = tight.gateway.audit
    disk = audit._file

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    def wait_for(condition):
        deadline = time.monotonic() + 20
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.02)

    audit._file = Full()
    try:
        with tight.client() as client:
            first = client.get("/v2/models/plain/ready", headers=bearer(token("oscar")))
            assert first.status_code == 200  # its record is queued; writing it fails
            wait_for(lambda: audit.error is not None)
            refused = client.get("/v2/models/plain/ready", headers=bearer(token("oscar")))
            assert refused.status_code == 503
            assert "No space left on device: refusing requests that could not be audited" in refused.json()["error"]
            assert client.get("/v2/health/ready").status_code == 503
            audit._file = disk  # the disk has room again: the writer's retry catches up
            wait_for(lambda: audit.error is None)
            assert client.get("/v2/health/ready").status_code == 200
        ids = {first.headers["x-request-id"], refused.headers["x-request-id"]}
        wait_for(lambda: ids <= {r.get("request_id") for r in audit_lines(audit.path)})
    finally:
        audit._file = disk
