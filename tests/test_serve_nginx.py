"""A real nginx with auth_request in front of an upstream, asking bastion's /authz endpoint."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from serve_helpers import bearer, main_server, token

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()),
                                      None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install -y nginx)")

CONFIG = """
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        # Any OIP upstream (Triton, KServe, MLServer...): bastion decides, the upstream learns who asked.
        location /v2/ {{
            auth_request /_bastion_authz;
            auth_request_set $bastion_subject $upstream_http_x_bastion_subject;
            auth_request_set $bastion_issuer $upstream_http_x_bastion_issuer;
            auth_request_set $bastion_scope $upstream_http_x_bastion_scope;
            proxy_set_header X-Bastion-Subject $bastion_subject;
            proxy_set_header X-Bastion-Issuer $bastion_issuer;
            proxy_set_header X-Bastion-Scope $bastion_scope;
            proxy_pass http://127.0.0.1:{upstream};
        }}
        # A path outside the protocol: the auth URL names the action and model.
        location /app/ {{
            auth_request /_bastion_authz_app;
            auth_request_set $bastion_subject $upstream_http_x_bastion_subject;
            proxy_set_header X-Bastion-Subject $bastion_subject;
            proxy_pass http://127.0.0.1:{upstream};
        }}
        location = /_bastion_authz {{
            internal;
            proxy_pass http://127.0.0.1:{bastion}/authz;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
        location = /_bastion_authz_app {{
            internal;
            proxy_pass http://127.0.0.1:{bastion}/authz?action=predict&model=mnist-cnn-robust;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
"""


class _Echo(BaseHTTPRequestHandler):
    """The upstream: answers with the headers it was sent."""

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    bastion = main_server()
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    tmp = tmp_path_factory.mktemp("nginx")
    port = _free_port()
    user = "user root;" if os.geteuid() == 0 else ""  # workers would run as nobody, who cannot read tmp
    (tmp / "nginx.conf").write_text(CONFIG.format(user=user, tmp=tmp, port=port, upstream=upstream.server_port,
                                                  bastion=bastion.port))
    proc = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url + "/v2/health/live", timeout=1)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"nginx did not start: {proc.stderr.read().decode()} "
                            f"{(tmp / 'error.log').read_text() if (tmp / 'error.log').exists() else ''}")
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    upstream.shutdown()


def test_nginx_auth_request_allows_with_the_identity_headers(nginx):
    with httpx.Client(base_url=nginx, timeout=10) as client:
        spoofed = {"X-Bastion-Subject": "root"}  # a client cannot name itself: nginx overwrites it
        seen = client.post("/v2/models/plain/infer", content=b"{}",
                           headers=bearer(token("paula", "predict"), **spoofed))
        assert seen.status_code == 200, seen.text
        headers = seen.json()
        assert headers["x-bastion-subject"] == "paula" and headers["x-bastion-scope"] == "predict"
        assert headers["x-bastion-issuer"] == "https://auth.test"
        assert client.get("/v2/health/live").status_code == 200  # an open path needs no token
        app = client.get("/app/anything", headers=bearer(token("paula", "robust-only")))
        assert app.status_code == 200 and app.json()["x-bastion-subject"] == "paula"


def test_nginx_auth_request_denies(nginx):
    with httpx.Client(base_url=nginx, timeout=10) as client:
        missing = client.post("/v2/models/plain/infer", content=b"{}")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="bastion"'  # nginx passes the challenge on
        forged = client.get("/v2/models/plain", headers=bearer(token("paula") + "x"))
        assert forged.status_code == 401 and 'error="invalid_token"' in forged.headers["www-authenticate"]
        scope = client.post("/v2/repository/index", headers=bearer(token("paula", "predict")))
        assert scope.status_code == 403
        app = client.get("/app/anything", headers=bearer(token("paula", "limited")))
        assert app.status_code == 200
        other_model = client.get("/app/anything", headers=bearer(token("quinn", "nothing")))
        assert other_model.status_code == 403
