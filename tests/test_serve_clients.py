"""Existing clients and gateways: tritonclient unchanged, the ASGI middleware on another app, Envoy-shaped /authz."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from serve_helpers import bearer, mnist_images, token, world
from serve_helpers import server  # noqa: F401 (a fixture)


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_http_calls_infer_unchanged(server, binary):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    headers = bearer(token("triton-user"))
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("plain", headers=headers)
        assert not client.is_model_ready("tampered", headers=headers)
        metadata = client.get_model_metadata("plain", headers=headers)
        assert metadata["inputs"][0]["shape"] == [-1, 1, 28, 28]
        x, _ = mnist_images()
        tensor = httpclient.InferInput("input", [3, 1, 28, 28], "FP32")
        tensor.set_data_from_numpy(x[:3], binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary),
                   httpclient.InferRequestedOutput("class", binary_data=binary)]
        result = client.infer("plain", [tensor], outputs=outputs, headers=headers, request_id="t-1")
        from bastion.models import load_model
        import torch

        expected = load_model("mnist-cnn").module(torch.from_numpy(x[:3])).numpy()
        assert np.allclose(result.as_numpy("logits"), expected, atol=1e-4)
        assert result.as_numpy("class").tolist() == expected.argmax(1).tolist()
        assert result.get_response()["id"] == "t-1"
        with pytest.raises(InferenceServerException, match="no bearer token"):
            client.infer("plain", [tensor])
    finally:
        client.close()


def test_asgi_middleware_guards_another_starlette_app(tmp_path):
    import uvicorn
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from bastion.serving.audit import AuditLog
    from bastion.serving.middleware import BastionAuthMiddleware

    async def predict(request):
        return JSONResponse({"who": request.state.bastion["subject"], "model": request.state.bastion["model"]})

    async def health(request):
        return JSONResponse({"ok": True})

    async def stream(websocket):
        await websocket.accept()
        await websocket.send_text(websocket.state.bastion["subject"])
        await websocket.close()

    from starlette.routing import WebSocketRoute

    inner = Starlette(routes=[Route("/v2/models/{name}/infer", predict, methods=["POST"]),
                              Route("/v2/health/live", health), WebSocketRoute("/v2/models/{name}/stream", stream)])
    audit = AuditLog(tmp_path / "mw.jsonl")
    app = BastionAuthMiddleware(inner, world().policy_path, audit=audit)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/v2/health/live").json() == {"ok": True}
            missing = client.post("/v2/models/any/infer")
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="bastion"'
            narrow = client.post("/v2/models/plain/infer", headers=bearer(token("nick", "robust-only")))
            assert narrow.status_code == 403 and "no scope held" in narrow.json()["error"]
            ok = client.post("/v2/models/plain/infer", headers=bearer(token("nick", "predict")))
            assert ok.status_code == 200 and ok.json() == {"who": "nick", "model": "plain"}
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        ws_url = url.replace("http://", "ws://") + "/v2/models/plain/stream"
        with pytest.raises(InvalidStatus, match="403"):  # a websocket to a guarded path needs the token too
            connect(ws_url, open_timeout=10)
        with connect(ws_url, additional_headers=bearer(token("nick", "predict")), open_timeout=10) as ws:
            assert ws.recv(timeout=10) == "nick"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        audit.close()
    statuses = [line.split('"status":')[1].split(",")[0] for line in (tmp_path / "mw.jsonl").read_text().splitlines()]
    assert statuses == ["401", "403", "200"]


def test_authz_endpoint_in_envoy_shape(server):
    with server.client() as client:
        open_path = client.get("/authz/v2/health/ready")
        assert open_path.status_code == 200
        denied = client.post("/authz/v2/models/plain/infer")
        assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Bearer")
        allowed = client.post("/authz/v2/models/plain/infer", headers=bearer(token("olga", "predict")))
        assert allowed.status_code == 200
        assert allowed.headers["x-bastion-subject"] == "olga" and allowed.headers["x-bastion-scope"] == "predict"
        assert allowed.headers["x-bastion-issuer"] == "https://auth.test"
        scope = client.post("/authz/v2/repository/models/plain/load", headers=bearer(token("olga", "predict")))
        assert scope.status_code == 403 and "'admin'" in scope.json()["error"]
        unknown = client.get("/authz/api/other", headers=bearer(token("olga", "predict")))
        assert unknown.status_code == 403 and "not an Open Inference Protocol path" in unknown.json()["error"]
        limited = bearer(token("olga-limited", "limited"))
        codes = [client.get("/authz/v2/models/plain", headers=limited).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
