"""Hot swap through the repository extension: verified first; a refused version leaves the old one serving."""

from __future__ import annotations

import json
import shutil
import socket
import time
from functools import lru_cache

import pytest

from bastion.access.signing import sign_model
from serve_helpers import bearer, copy_zoo, infer_body, signed_bundle, token, wait_in_flight, world
from serve_helpers import client, server  # noqa: F401 (fixtures)


@lru_cache(maxsize=1)
def admin() -> dict[str, str]:
    return bearer(token("root", "admin"))


def test_swap_to_a_good_version_then_a_tampered_one(client):
    repo = world().repository
    user = bearer(token("frank", "predict"))
    assert client.get("/v2/models/swap", headers=user).json()["versions"] == ["1"]

    signed_bundle(repo / "swap" / "2", world().signer_key, "mnist-cnn-robust")
    loaded = client.post("/v2/repository/models/swap/load", headers=admin())
    assert loaded.status_code == 200 and loaded.json()["loaded"] == ["1", "2"]
    meta = client.get("/v2/models/swap", headers=user).json()
    assert meta["versions"] == ["1", "2"] and meta["bastion"]["version"] == "2"  # the latest by default
    assert client.post("/v2/models/swap/infer", json=infer_body(), headers=user).json()["model_version"] == "2"
    served_digest = meta["bastion"]["model_digest"]

    # Version 2's weights change on disk after it was verified: nothing changes until a load...
    weights = repo / "swap" / "2" / "model.safetensors"
    weights.write_bytes((repo / "plain" / "model.safetensors").read_bytes())
    assert client.get("/v2/models/swap/versions/2", headers=user).json()["bastion"]["model_digest"] == served_digest
    # ...and the load refuses the new bytes: the old version 2 keeps serving.
    refused = client.post("/v2/repository/models/swap/load", headers=admin())
    assert refused.status_code == 400
    error = refused.json()
    assert "version 2: " in error["error"] and "file 'model.safetensors' changed" in error["error"]
    assert error["kept"] == ["2"] and error["refused"][0]["check"] == "tampered"
    after = client.get("/v2/models/swap/versions/2", headers=user).json()
    assert after["bastion"]["model_digest"] == served_digest and after["bastion"]["ready"] is True
    assert client.post("/v2/models/swap/versions/2/infer", json=infer_body(), headers=user).status_code == 200
    index = [r for r in client.post("/v2/repository/index", headers=admin()).json() if r["name"] == "swap"]
    assert {"name": "swap", "version": "2", "state": "READY", "reason": ""} in index
    assert any(r["state"] == "UNAVAILABLE" and "keeps serving" in r["reason"] for r in index)


def test_requests_in_flight_finish_on_their_version_across_a_swap_and_an_unload(server, client):
    repo = world().repository
    folder = repo / "swap-inplace"
    signed_bundle(folder, world().signer_key)
    user = bearer(token("grace", "predict"))
    assert client.post("/v2/repository/models/swap-inplace/load", headers=admin()).status_code == 200
    assert client.get("/v2/models/swap-inplace/ready", headers=user).json()["version"] == "1"

    body = json.dumps(infer_body()).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as slow:
        # A request that started on version 1 and is still sending its body...
        slow.sendall((f"POST /v2/models/swap-inplace/infer HTTP/1.1\r\nHost: x\r\nAuthorization: "
                      f"{user['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body[:100])
        wait_in_flight(server.url, 1)
        # ...while the folder is replaced by a retrained, re-signed version 2.
        shutil.rmtree(folder)
        copy_zoo(folder, "mnist-cnn-robust")
        meta = folder / "bastion.toml"
        meta.write_text(meta.read_text().replace('version = "1"', 'version = "2"'))
        sign_model(folder, world().signer_key)
        assert client.post("/v2/repository/models/swap-inplace/load", headers=admin()).json()["loaded"] == ["2"]
        assert client.post("/v2/models/swap-inplace/infer", json=infer_body(),
                           headers=user).json()["model_version"] == "2"
        assert client.post("/v2/repository/models/swap-inplace/unload", headers=admin()).json()["unloaded"] == ["2"]
        slow.sendall(body[100:])
        answer = _read_response(slow)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["model_version"] == "1"
    gone = client.get("/v2/models/swap-inplace/ready", headers=user)
    assert gone.status_code == 400 and "unloaded by an admin request" in gone.json()["reason"]
    assert client.post("/v2/repository/models/swap-inplace/unload", headers=bearer(token("grace", "predict"))
                       ).status_code == 403
    events = [r for r in _audit(server) if r.get("model") == "swap-inplace" and "event" in r]
    assert [e["event"] for e in events] == ["load", "load", "unload"]


def test_load_and_unload_of_unknown_or_malformed_names(client):
    assert client.post("/v2/repository/models/not-there/load", headers=admin()).status_code == 404
    assert client.post("/v2/repository/models/not-there/unload", headers=admin()).status_code == 404
    assert client.post("/v2/repository/models/a%20b/load", headers=admin()).status_code == 400
    assert client.post("/v2/repository/models/plain/load").status_code == 401


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


def _audit(server):
    from serve_helpers import audit_lines

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = audit_lines(server.gateway.audit.path)
        if sum(1 for r in records if r.get("model") == "swap-inplace" and r.get("event") == "unload"):
            return records
        time.sleep(0.05)
    return audit_lines(server.gateway.audit.path)
