"""The gateway on a real uvicorn server: every endpoint, only verified models, every refusal with its status."""

from __future__ import annotations

import json
import re
import socket
import time

import numpy as np
import pytest

from serve_helpers import ISS, audit_lines, bearer, infer_body, mnist_images, token, world
from serve_helpers import client, server  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def auth():
    return bearer(token("alice", "predict"))


# -- open endpoints ----------------------------------------------------------------------------

def test_health_server_metadata_and_openapi(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "bastion" and "model_repository" in meta["extensions"]
    doc = client.get("/v2/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/v2/models/{name}/infer" in doc["paths"]


def test_unknown_route_and_method_are_json_errors(client):
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404 and "no such endpoint" in missing.json()["error"]
    wrong = client.get("/v2/models/plain/infer", headers=bearer(token()))
    assert wrong.status_code == 405 and "not allowed" in wrong.json()["error"]


# -- verified models served, the others refused with their reasons ---------------------------------

def test_signed_and_attested_model_is_served_with_its_verification(client, auth):
    assert client.get("/v2/models/mnist-cnn-robust/ready", headers=auth).json()["ready"] is True
    meta = client.get("/v2/models/mnist-cnn-robust", headers=auth).json()
    assert meta["name"] == "mnist-cnn-robust" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28],
                               "parameters": {"accepts": "FP32 or UINT8", "bounds": "0,1"}}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "class", "detector_score", "flagged"]
    trust = meta["bastion"]
    assert trust["ready"] and re.fullmatch(r"sha256:[0-9a-f]{64}", trust["model_digest"])
    from bastion.access.envelope import key_hint

    assert trust["signer_key_hint"] == key_hint(world().signer_key.public_key())
    robustness = trust["robustness"]
    assert robustness["attester_key_hint"] == key_hint(world().attester_key.public_key())
    assert robustness["robust_accuracy"] == [{"label": "linf", "eps": 0.3, "accuracy": 0.85}]
    assert robustness["requirements_met"] == ["robust_accuracy[0.3]>=0.8 (attested 0.85)", "flags==0 (attested 0)"]
    assert trust["detector"]["mode"] == "flag" and trust["detector"]["target_fpr"] == 0.05
    assert client.get("/v2/models/mnist-cnn-robust/versions/1", headers=auth).json()["bastion"]["version"] == "1"


@pytest.mark.parametrize("name, check, reason", [
    ("unsigned", "unsigned", r"unsigned \(no model\.sig\)"),
    ("tampered", "tampered", r"file 'bastion\.toml' changed"),
    ("wrong-signer", "signature", r"signed by a different key"),
    ("weak", "requirement", r"requirement robust_accuracy>=0\.95 not met \(attested value 0\.85\)"),
    ("other-digest", "other_digest", r"attests a different model \('mnist-cnn-robust'"),
    ("no-attestation", "no_attestation", r"requires a robustness attestation"),
])
def test_unverified_models_are_refused_with_their_reasons(client, auth, name, check, reason):
    ready = client.get(f"/v2/models/{name}/ready", headers=auth)
    assert ready.status_code == 400 and ready.json()["ready"] is False
    assert re.search(reason, ready.json()["reason"]), ready.json()
    assert "bastion-verified-" not in ready.json()["reason"]  # the model's path, never the private copy's
    meta = client.get(f"/v2/models/{name}", headers=auth).json()
    assert meta["bastion"]["ready"] is False and meta["versions"] == [] and meta["inputs"] == []
    assert meta["bastion"]["refusals"][0]["check"] == check
    infer = client.post(f"/v2/models/{name}/infer", json=infer_body(), headers=auth)
    assert infer.status_code == 400 and re.search(reason, infer.json()["error"])
    metrics = client.get("/metrics").text
    assert f'bastion_model_refusals_total{{model="{name}",reason="{check}"}} 1.0' in metrics


def test_metrics_count_served_models_and_say_which(client):
    text = client.get("/metrics").text
    for name in ("mnist-cnn-robust", "plain", "rejecting"):
        assert f'bastion_model_ready{{model="{name}",version="1"}} 1.0' in text
    served = float(re.search(r"^bastion_models_served (\S+)$", text, re.M).group(1))
    assert served >= 4


def test_repository_index_lists_served_and_refused(client):
    index = client.post("/v2/repository/index", headers=bearer(token("root", "admin")))
    assert index.status_code == 200
    rows = {row["name"]: row for row in index.json()}
    assert rows["plain"]["state"] == "READY" and rows["plain"]["version"] == "1"
    assert rows["tampered"]["state"] == "UNAVAILABLE" and "changed" in rows["tampered"]["reason"]


# -- inference ------------------------------------------------------------------------------------

def test_infer_batched_fp32_and_uint8_agree_with_the_model(client, auth):
    from bastion.models import load_model
    import torch

    x, y = mnist_images()
    response = client.post("/v2/models/plain/infer", json=infer_body(4, id="req-7"), headers=auth)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["model_name"] == "plain" and doc["model_version"] == "1" and doc["id"] == "req-7"
    logits = np.array(doc["outputs"][0]["data"], dtype=np.float32).reshape(doc["outputs"][0]["shape"])
    expected = load_model("mnist-cnn").module(torch.from_numpy(x[:4])).numpy()
    assert np.allclose(logits, expected, atol=1e-4)
    assert doc["outputs"][1] == {"name": "class", "datatype": "INT64", "shape": [4], "data": list(expected.argmax(1))}
    as_uint8 = client.post("/v2/models/plain/versions/1/infer", json=infer_body(4, datatype="UINT8"),
                           headers=auth).json()
    assert as_uint8["outputs"][1]["data"] == doc["outputs"][1]["data"]
    only = client.post("/v2/models/plain/infer", json=infer_body(1, outputs=[{"name": "class"}]), headers=auth).json()
    assert [o["name"] for o in only["outputs"]] == ["class"]
    nested = infer_body(2)
    nested["inputs"][0]["data"] = x[:2].tolist()  # nested as the shape, not flat
    assert client.post("/v2/models/plain/infer", json=nested, headers=auth).json()["outputs"][1]["data"] == \
        doc["outputs"][1]["data"][:2]


def test_sanitised_bundles_serve_with_their_sanitiser(client, auth):
    from bastion.defenses.sanitizer import SanitizedModel, load_sanitizer
    from bastion.models import load_model
    import torch

    meta = client.get("/v2/models/sanitized", headers=auth).json()
    assert meta["bastion"]["sanitizer"] == "sanitize-bitdepth"
    x, _ = mnist_images()
    wrapped = SanitizedModel(load_model("mnist-cnn").module, load_sanitizer("sanitize-bitdepth"))
    expected = wrapped(torch.from_numpy(x[:3])).numpy()
    doc = client.post("/v2/models/sanitized/infer", json=infer_body(3), headers=auth).json()
    assert np.allclose(np.array(doc["outputs"][0]["data"]).reshape(3, 10), expected, atol=1e-4)
    # Its recipe clamps out-of-range values itself, so the gateway lets them through to it.
    bright = infer_body(1)
    bright["inputs"][0]["data"] = [1.5] * 784
    assert client.post("/v2/models/sanitized/infer", json=bright, headers=auth).status_code == 200
    assert client.post("/v2/models/plain/infer", json=bright, headers=auth).status_code == 400


def test_detector_flag_marks_the_response_and_counts(client, auth):
    dim = infer_body(2, offset=2)
    dim["inputs"][0]["data"] = (np.array(dim["inputs"][0]["data"]) * 0.45).tolist()  # bit-depth squeezing erases it
    clean = client.post("/v2/models/mnist-cnn-robust/infer", json=infer_body(2), headers=auth).json()
    assert clean["parameters"] == {"bastion_detector": "flag", "bastion_flagged": 0}
    flagged = client.post("/v2/models/mnist-cnn-robust/infer", json=dim, headers=auth).json()
    assert flagged["parameters"] == {"bastion_detector": "flag", "bastion_flagged": 2}
    outputs = {o["name"]: o for o in flagged["outputs"]}
    assert outputs["flagged"]["data"] == [True, True] and outputs["flagged"]["datatype"] == "BOOL"
    assert 'bastion_detector_flags_total{mode="flag",model="mnist-cnn-robust",version="1"} 2.0' in \
        client.get("/metrics").text


def test_detector_reject_answers_422(client, auth):
    assert client.post("/v2/models/rejecting/infer", json=infer_body(2), headers=auth).status_code == 200
    dim = infer_body(1)
    dim["inputs"][0]["data"] = (np.array(dim["inputs"][0]["data"]) * 0.45).tolist()
    refused = client.post("/v2/models/rejecting/infer", json=dim, headers=auth)
    assert refused.status_code == 422
    assert re.search(r"1 of 1 input\(s\) flagged as adversarial .* > threshold", refused.json()["error"])


# -- 400: every field is checked and named ----------------------------------------------------

def _edit(path, value):
    body = infer_body(1)
    target = body
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


@pytest.mark.parametrize("body, field", [
    (_edit(("inputs",), []), r"^inputs: the model takes exactly one input"),
    (_edit(("inputs",), KeyError), r"^inputs:"),
    (_edit(("inputs", 0, "name"), "pixels"), r"^inputs\[0\]\.name: expected 'input'"),
    (_edit(("inputs", 0, "datatype"), "FP64"), r"^inputs\[0\]\.datatype: expected FP32 or UINT8"),
    (_edit(("inputs", 0, "shape"), [1, 28, 28]), r"^inputs\[0\]\.shape: expected \[N, 1, 28, 28\]"),
    (_edit(("inputs", 0, "shape"), [1, 1, 28, 29]), r"^inputs\[0\]\.shape"),
    (_edit(("inputs", 0, "shape"), [0, 1, 28, 28]), r"^inputs\[0\]\.shape: N must be 1 to"),
    (_edit(("inputs", 0, "shape"), [100000, 1, 28, 28]), r"^inputs\[0\]\.shape: N must be"),
    (_edit(("inputs", 0, "shape"), [1, 1, 28, "28"]), r"^inputs\[0\]\.shape"),
    (_edit(("inputs", 0, "data"), [0.5] * 10), r"^inputs\[0\]\.data: holds 10 values"),
    (_edit(("inputs", 0, "data"), ["a"] * 784), r"^inputs\[0\]\.data: FP32 data must be numbers, got strings"),
    (_edit(("inputs", 0, "data"), [True] * 784), r"^inputs\[0\]\.data: FP32 data must be numbers, got booleans"),
    (_edit(("inputs", 0, "data"), [[0.5], 0.5]), r"^inputs\[0\]\.data: not a list of numbers"),
    (_edit(("inputs", 0, "data"), [1.5] * 784), r"^inputs\[0\]\.data: values span \[1\.5, 1\.5\], outside"),
    (_edit(("inputs", 0, "data"), [-0.1] * 784), r"^inputs\[0\]\.data: values span .*outside"),
    (_edit(("inputs", 0, "data"), [1e39] * 784), r"^inputs\[0\]\.data: 784 value\(s\) are NaN or infinite"),
    (_edit(("inputs", 0, "data"), "0.5"), r"^inputs\[0\]\.data: expected a list"),
    (_edit(("inputs", 0, "extra"), 1), r"^inputs\[0\]\.extra: unknown field"),
    (_edit(("outputs",), [{"name": "probabilities"}]), r"^outputs\[0\]\.name: expected one of logits, class"),
    (_edit(("outputs",), [{"name": "class"}, {"name": "class"}]), r"^outputs\[1\]\.name"),
    (_edit(("id",), 7), r"^id: expected a string"),
    (_edit(("model",), "plain"), r"^model: unknown field"),
    ([1, 2, 3], r"^request body: expected a JSON object"),
])
def test_bad_inputs_get_400_naming_the_field(client, auth, body, field):
    response = client.post("/v2/models/plain/infer", json=body, headers=auth)
    assert response.status_code == 400, response.text
    assert re.search(field, response.json()["error"]), response.json()


def test_uint8_out_of_range_nan_and_bad_json_get_400(client, auth):
    body = infer_body(1, datatype="UINT8")
    body["inputs"][0]["data"][0] = 256
    assert "UINT8 values must be 0 to 255" in client.post("/v2/models/plain/infer", json=body,
                                                          headers=auth).json()["error"]
    body["inputs"][0]["data"][0] = 0.5
    assert "UINT8 data must be integers" in client.post("/v2/models/plain/infer", json=body,
                                                        headers=auth).json()["error"]
    raw = json.dumps(infer_body(1)).replace("0.0,", "NaN,", 1)
    nan = client.post("/v2/models/plain/infer", content=raw, headers={**auth, "Content-Type": "application/json"})
    assert nan.status_code == 400 and "NaN is not JSON" in nan.json()["error"]
    for text in ("{", "\xff", "[" * 100000, '{"inputs": ' + "[" * 5000 + "]" * 5000 + "}"):
        bad = client.post("/v2/models/plain/infer", content=text.encode("utf-8", "surrogateescape"),
                          headers={**auth, "Content-Type": "application/json"})
        assert bad.status_code == 400, (text[:20], bad.text)
        assert bad.json()["error"].startswith(("request body", "inputs"))


def test_bad_model_names_and_versions_get_400_or_404(client, auth):
    assert client.get("/v2/models/..%2F..%2Fetc/ready", headers=auth).status_code in (400, 404)
    assert client.get("/v2/models/a%20b", headers=auth).status_code == 400
    assert "model name" in client.get("/v2/models/a%20b", headers=auth).json()["error"]
    assert client.get("/v2/models/nothing-here", headers=auth).status_code == 404
    assert client.get("/v2/models/plain/versions/9", headers=auth).status_code == 404
    assert client.get("/v2/models/plain/versions/-x", headers=auth).status_code == 400


# -- 413, 415 ---------------------------------------------------------------------------------

def test_413_before_reading_a_declared_body(server, auth):
    # Declare 64 MiB and send none of it: the answer comes without the body being read.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        request = (f"POST /v2/models/plain/infer HTTP/1.1\r\nHost: x\r\nAuthorization: {auth['Authorization']}\r\n"
                   "Content-Type: application/json\r\nContent-Length: 67108864\r\n\r\n")
        sock.sendall(request.encode())
        head = sock.recv(65536).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head
    assert "exceeds the limit of 1048576 bytes" in head


def test_413_while_streaming_an_undeclared_body(client, auth):
    def chunks():
        for _ in range(300):
            yield b" " * 8192

    response = client.post("/v2/models/plain/infer", content=chunks(),
                           headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 413 and "exceeds the limit" in response.json()["error"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_415_for_other_media_types(client, auth, content_type):
    response = client.post("/v2/models/plain/infer", content=json.dumps(infer_body()),
                           headers={**auth, "Content-Type": content_type})
    assert response.status_code == 415 and "unsupported media type" in response.json()["error"]


def test_415_for_compressed_bodies_and_json_without_a_content_type(client, auth):
    gz = client.post("/v2/models/plain/infer", content=b"x", headers={**auth, "Content-Encoding": "gzip"})
    assert gz.status_code == 415 and "Content-Encoding" in gz.json()["error"]
    bare = client.post("/v2/models/plain/infer", content=json.dumps(infer_body()).encode(), headers=auth)
    assert bare.status_code == 200  # tritonclient sends no Content-Type


# -- 401, 403, 429 -----------------------------------------------------------------------------

@pytest.mark.parametrize("header, reason", [
    (None, "no bearer token"),
    ("Basic dXNlcjpwYXNz", "no bearer token"),
    ("Bearer", "not 'Bearer <token>'"),
    ("Bearer not-a-jwt", "token has 1 segments"),
    ("Bearer a.b.c", "token header is not base64url"),
])
def test_401_without_a_usable_token(client, header, reason):
    response = client.post("/v2/models/plain/infer", json=infer_body(), headers={"Authorization": header} if header
                           else {})
    assert response.status_code == 401
    assert reason in response.json()["error"]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="bastion"')
    if reason != "no bearer token":
        assert 'error="invalid_token"' in challenge


def test_401_for_rejected_tokens_with_rfc6750_challenge(client):
    from bastion.access.keys import generate_private_key

    cases = {
        "expired": token(ttl=1, now=time.time() - 3600),
        "signature does not verify": token(key=generate_private_key("ec-p256")),
        "wrong audience": token(aud="someone-else"),
    }
    for reason, text in cases.items():
        response = client.get("/v2/models/plain", headers=bearer(text))
        assert response.status_code == 401, reason
        assert reason in response.json()["error"]
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="bastion", error="invalid_token", error_description="')
        assert text not in challenge and text not in response.text
    metrics = client.get("/metrics").text
    assert re.search(r'bastion_auth_denials_total\{reason="expired_token"\} [1-9]', metrics)


def test_403_for_a_valid_token_without_the_scope(client):
    narrow = bearer(token("bob", "robust-only"))
    assert client.get("/v2/models/mnist-cnn-robust/ready", headers=narrow).status_code == 200
    denied = client.post("/v2/models/plain/infer", json=infer_body(), headers=narrow)
    assert denied.status_code == 403
    assert denied.headers["www-authenticate"] == 'Bearer realm="bastion", error="insufficient_scope"'
    assert "no scope held grants 'predict' on model 'plain'" in denied.json()["error"]
    admin_only = client.post("/v2/repository/index", headers=bearer(token("alice", "predict")))
    assert admin_only.status_code == 403 and "'admin'" in admin_only.json()["error"]


def test_429_with_retry_after_from_the_callers_rate_limit(client):
    limited = bearer(token("carol-429", "limited"))
    codes = [client.get("/v2/models/plain/ready", headers=limited).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    refused = client.get("/v2/models/plain/ready", headers=limited)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "rate limited: 'carol-429' may send 0.05 requests/s (burst 3) under scope 'limited'" in refused.json()["error"]
    # The bucket is the caller's: another caller of the same scope is not affected.
    assert client.get("/v2/models/plain/ready", headers=bearer(token("dave-429", "limited"))).status_code == 200
    assert re.search(r'bastion_rate_limited_total\{scope="limited"\} [2-9]', client.get("/metrics").text)


# -- audit ------------------------------------------------------------------------------------

def test_audit_records_every_decision_without_the_token(server, client):
    text = token("erin-audit", "predict", jti="jti-erin")
    ok = client.post("/v2/models/plain/infer", json=infer_body(), headers=bearer(text))
    denied = client.get("/v2/models/plain", headers=bearer(token("erin-audit", "nothing")))
    ids = {ok.headers["x-request-id"]: 200, denied.headers["x-request-id"]: 403}
    deadline = time.monotonic() + 10
    while True:
        records = {r.get("request_id"): r for r in audit_lines(server.gateway.audit.path)}
        if set(ids) <= set(records) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    allowed, refused = records[ok.headers["x-request-id"]], records[denied.headers["x-request-id"]]
    assert allowed["decision"] == "allow" and allowed["status"] == 200 and allowed["action"] == "predict"
    assert allowed["model"] == "plain" and allowed["version"] == "1" and allowed["issuer"] == ISS
    assert allowed["subject"] == "erin-audit" and allowed["scope"] == "predict"
    import hashlib

    assert allowed["jti_sha256"] == hashlib.sha256(b"jti-erin").hexdigest()[:32]
    assert allowed["latency_ms"] > 0 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", allowed["time"])
    assert refused["decision"] == "deny" and refused["status"] == 403 and "no scope held" in refused["reason"]
    log = server.gateway.audit.path
    assert text not in open(log).read()
    events = [r for r in audit_lines(log) if r.get("event") in ("load", "refuse")]
    assert {"plain", "tampered"} <= {r["model"] for r in events}
