"""A key server that answers slowly never stalls the gateway: JWKS refetches wait in a thread."""

from __future__ import annotations

import base64
import json
import threading
import time

from bastion.access.token_keys import public_jwk, thumbprint
from serve_helpers import POLICY, LIMITS, bearer, infer_body, start_server, token, world
from test_tokens_support import JwksServer


def test_unknown_kid_refetch_does_not_block_the_event_loop():
    w = world()
    jwk = {**public_jwk(w.issuer_key.public_key()), "kid": thumbprint(w.issuer_key.public_key()), "alg": "ES256"}
    with JwksServer({"keys": [jwk]}) as keys:
        policy_path = w.root / "policy-jwks-url.toml"
        policy_path.write_text(POLICY.replace("{limits}", LIMITS).replace(
            'key_file = "issuer.key.pub"',
            f'jwks_url = "{keys.url}/jwks.json"\ninsecure_localhost = true\njwks_cooldown_seconds = 0'))
        server = start_server(policy_path=policy_path)
        try:
            with server.client() as client:
                known = bearer(token("carol"))
                assert client.post("/v2/models/plain/infer", json=infer_body(), headers=known).status_code == 200
                keys.delay = 2.0  # the next fetch (an unknown kid's) hangs for 2 s
                forged_kid = token("mallory").split(".")
                header = json.loads(base64.urlsafe_b64decode(forged_kid[0] + "=="))
                header["kid"] = "not-published"
                forged_kid[0] = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
                slow = {}

                def unknown_kid():
                    with server.client() as other:
                        slow["response"] = other.post("/v2/models/plain/infer", json=infer_body(),
                                                      headers=bearer(".".join(forged_kid)))

                caller = threading.Thread(target=unknown_kid)
                caller.start()
                deadline = time.monotonic() + 5
                while keys.requests < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert keys.requests == 2  # the refetch is in flight
                started = time.monotonic()
                assert client.get("/v2/health/live").status_code == 200
                assert client.post("/v2/models/plain/infer", json=infer_body(), headers=known).status_code == 200
                assert time.monotonic() - started < 1.0  # well inside the key server's 2 s
                caller.join(timeout=10)
                assert slow["response"].status_code == 401
        finally:
            server.stop()
