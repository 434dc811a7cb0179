"""JWKS from a URL (a real HTTP server on 127.0.0.1): rotation, unknown-kid floods, outages, limits."""

from __future__ import annotations

import json
import threading
import time

import pytest

from bastion.access.jwks import RemoteJwks, jwks_document, parse_jwks
from bastion.access.policy_file import load_policy
from bastion.access.token_keys import public_jwk
from bastion.errors import ConfigError, KeySetError, TokenError
from test_tokens_support import AUD, ISS, JwksServer, claims, kid_of, private_key, sign, write_policy


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def jwk_for(key, kid=None):
    return {**public_jwk(key.public_key()), "kid": kid or kid_of(key), "alg": "ES256", "use": "sig"}


def url_policy(tmp_path, url, extra=""):
    policy = load_policy(write_policy(tmp_path, f"""
audience = "{AUD}"
[[issuers]]
iss = "{ISS}"
algorithm = "ES256"
jwks_url = "{url}/.well-known/jwks.json"
insecure_localhost = true
jwks_ttl_seconds = 300
jwks_cooldown_seconds = 30
{extra}
[scopes.predict]
actions = ["predict"]
models = ["*"]
"""))
    source = policy.verifier.issuers[ISS].keys
    source.clock = FakeClock()
    return policy, source


def test_rotation(tmp_path):
    old, new = private_key("ec-p256", 0), private_key("ec-p256", 1)
    with JwksServer({"keys": [jwk_for(old)]}) as server:
        policy, source = url_policy(tmp_path, server.url)
        assert policy.verify(sign(claims(), old, headers={"kid": kid_of(old)})).kid == kid_of(old)
        assert server.requests == 1 and server.paths == ["/.well-known/jwks.json"]
        # The issuer starts signing with a new key it has just published.
        server.body = {"keys": [jwk_for(old), jwk_for(new)]}
        source.clock.now += 31  # past the cool-down since the last fetch
        assert policy.verify(sign(claims(jti="2"), new, headers={"kid": kid_of(new)})).kid == kid_of(new)
        assert server.requests == 2
        # The old key is withdrawn: once the cached set expires, its tokens stop verifying.
        server.body = {"keys": [jwk_for(new)]}
        source.clock.now += 301
        with pytest.raises(TokenError, match="unknown kid"):
            policy.verifier.verify(sign(claims(jti="3"), old, headers={"kid": kid_of(old)}))
        assert server.requests == 3


def test_unknown_kid_flood_is_bounded(tmp_path):
    key = private_key("ec-p256", 0)
    with JwksServer({"keys": [jwk_for(key)]}) as server:
        policy, source = url_policy(tmp_path, server.url)
        policy.verify(sign(claims(), key, headers={"kid": kid_of(key)}))
        for i in range(200):
            with pytest.raises(TokenError, match="unknown kid"):
                policy.verify(sign(claims(jti=str(i)), key, headers={"kid": f"made-up-{i}"}))
            source.clock.now += 0.1  # 20 s in all: inside one cool-down
        assert server.requests == 1
        source.clock.now += 30
        for i in range(50):
            with pytest.raises(TokenError, match="unknown kid"):
                policy.verify(sign(claims(jti=f"b{i}"), key, headers={"kid": f"again-{i}"}))
        assert server.requests == 2  # one refetch per cool-down, however many unknown kids


def test_server_down_keeps_last_good_set(tmp_path):
    key = private_key("ec-p256", 0)
    server = JwksServer({"keys": [jwk_for(key)]}).__enter__()
    policy, source = url_policy(tmp_path, server.url)
    token = sign(claims(), key, headers={"kid": kid_of(key)})
    policy.verifier.verify(token)
    server.stop()
    source.clock.now += 301  # the set is stale: a refetch is due, and fails
    assert policy.verifier.verify(token).kid == kid_of(key)
    assert source.fetch_count == 2 and source.last_error is not None
    with pytest.raises(TokenError, match="unknown kid"):
        policy.verifier.verify(sign(claims(), key, headers={"kid": "rotated-away"}))


@pytest.mark.parametrize("bad", ["status", "not-json", "too-big", "wrong-alg"])
def test_bad_responses_keep_last_good_set(tmp_path, bad):
    key = private_key("ec-p256", 0)
    with JwksServer({"keys": [jwk_for(key)]}) as server:
        policy, source = url_policy(tmp_path, server.url, extra="jwks_max_bytes = 2048")
        token = sign(claims(), key, headers={"kid": kid_of(key)})
        policy.verifier.verify(token)
        if bad == "status":
            server.status = 500
        elif bad == "not-json":
            server.body = b"<html>oops</html>"
        elif bad == "too-big":
            server.body = {"keys": [jwk_for(key)], "padding": "x" * 4096}
        else:
            server.body = {"keys": [{**jwk_for(key), "alg": "RS256"}]}
        source.clock.now += 301
        assert policy.verifier.verify(token).kid == kid_of(key)
        assert server.requests == 2 and source.last_error


def test_first_fetch_failure_is_a_clear_rejection(tmp_path):
    server = JwksServer({"keys": []}).__enter__()
    url = server.url
    server.stop()
    policy, source = url_policy(tmp_path, url)
    key = private_key("ec-p256", 0)
    with pytest.raises(TokenError, match="could not be fetched"):
        policy.verify(sign(claims(), key, headers={"kid": kid_of(key)}))
    with pytest.raises(TokenError, match="could not be fetched"):
        policy.verify(sign(claims(), key, headers={"kid": "x"}))
    assert source.fetch_count == 1  # the second attempt waits out the cool-down


@pytest.mark.parametrize("url, extra, problem", [
    ("http://auth.example.com/jwks", "", "must use https"),
    ("http://127.0.0.1:9/jwks", "", "needs insecure_localhost"),
    ("file:///etc/passwd", "", "must be an https"),
    ("ftp://example.com/jwks", "", "must be an https"),
])
def test_jwks_url_must_be_https(tmp_path, url, extra, problem):
    with pytest.raises(ConfigError, match=f"issuers\\[0\\].jwks_url: .*{problem}"):
        load_policy(write_policy(tmp_path, f"""
audience = "{AUD}"
[[issuers]]
iss = "{ISS}"
algorithm = "ES256"
jwks_url = "{url}"
[scopes.predict]
actions = ["predict"]
models = ["*"]
"""))


def test_redirects_are_refused():
    source = RemoteJwks(ISS, "http://127.0.0.1:1/jwks", "ES256", allow_insecure_localhost=True)
    import urllib.request

    request = urllib.request.Request("http://127.0.0.1:1/x")
    with pytest.raises(Exception, match="redirect"):
        source._opener.handlers[0].redirect_request(request, None, 302, "Found", {}, "https://evil.example.com/")


def test_local_jwks_file_and_document_roundtrip(tmp_path):
    key_a, key_b = private_key("ec-p256", 0), private_key("ec-p256", 1)
    document = jwks_document([key_a.public_key(), key_b.public_key()])
    assert [k["kid"] for k in document["keys"]] == [kid_of(key_a), kid_of(key_b)]
    assert all(k["alg"] == "ES256" and "d" not in k for k in document["keys"])
    (tmp_path / "set.json").write_text(json.dumps(document))
    policy = load_policy(write_policy(tmp_path, f"""
audience = "{AUD}"
[[issuers]]
iss = "{ISS}"
algorithm = "ES256"
jwks_file = "set.json"
[scopes.predict]
actions = ["predict"]
models = ["*"]
"""))
    assert policy.verify(sign(claims(), key_b, headers={"kid": kid_of(key_b)})).kid == kid_of(key_b)
    with pytest.raises(TokenError, match="token has no kid, and issuer .* has 2 keys"):
        policy.verify(sign(claims(), key_b))


def test_parse_jwks_skips_other_uses_and_refuses_bad_keys():
    key = private_key("ec-p256", 0)
    rsa_key = private_key("rsa-2048", 0)
    good = jwk_for(key)
    mixed = {"keys": [good, {**jwk_for(key, "enc-key"), "use": "enc"},
                      {**public_jwk(rsa_key.public_key()), "kid": "rsa"}]}
    assert list(parse_jwks(mixed, "ES256")) == [kid_of(key)]
    with pytest.raises(KeySetError, match="not a safe key id"):
        parse_jwks({"keys": [{**good, "kid": "../x"}]}, "ES256")
    with pytest.raises(KeySetError, match="appears twice"):
        parse_jwks({"keys": [good, good]}, "ES256")
    with pytest.raises(KeySetError, match="not a valid EC public key"):
        parse_jwks({"keys": [{**good, "x": "AAAA"}]}, "ES256")
    with pytest.raises(KeySetError, match="no ES256 signing keys"):
        parse_jwks({"keys": []}, "ES256")
    with pytest.raises(KeySetError, match='"keys" list'):
        parse_jwks(b"[]", "ES256")
    # Private members are never read: a JWK carrying "d" still yields only a public key.
    private_jwk = {**good, "d": "AAAA"}
    assert not hasattr(parse_jwks({"keys": [private_jwk]}, "ES256")[kid_of(key)], "sign")


def test_cached_claims_are_dropped_when_their_key_leaves_the_jwks(tmp_path):
    old, new = private_key("ec-p256", 0), private_key("ec-p256", 1)
    with JwksServer({"keys": [jwk_for(old), jwk_for(new)]}) as server:
        policy, source = url_policy(tmp_path, server.url)
        token = sign(claims(), old, headers={"kid": kid_of(old)})
        assert policy.authorize(token, "predict", "mnist-cnn").allowed
        assert len(policy.cache) == 1
        server.body = {"keys": [jwk_for(new)]}  # the issuer withdraws the old key
        source.clock.now += 301  # the cached set expires: the next use refetches it
        decision = policy.authorize(token, "predict", "mnist-cnn")
        assert not decision.allowed and "unknown kid" in decision.reason, decision.reason
        assert len(policy.cache) == 0 and server.requests == 2
        # The key is gone for good: the token stays refused, from the cache or not.
        assert not policy.authorize(token, "predict", "mnist-cnn").allowed


def test_cached_claims_are_dropped_when_a_kid_is_rotated_to_another_key(tmp_path):
    old, new = private_key("ec-p256", 0), private_key("ec-p256", 1)
    with JwksServer({"keys": [jwk_for(old, "current")]}) as server:
        policy, source = url_policy(tmp_path, server.url)
        token = sign(claims(), old, headers={"kid": "current"})
        assert policy.authorize(token, "predict", "mnist-cnn").allowed
        server.body = {"keys": [jwk_for(new, "current")]}  # same kid, new key material
        source.clock.now += 301
        decision = policy.authorize(token, "predict", "mnist-cnn")
        assert not decision.allowed and "signature does not verify" in decision.reason, decision.reason
        fresh = sign(claims(jti="after-rotation"), new, headers={"kid": "current"})
        assert policy.authorize(fresh, "predict", "mnist-cnn").allowed


def test_a_refetch_triggered_by_another_token_also_drops_the_withdrawn_key(tmp_path):
    old, new = private_key("ec-p256", 0), private_key("ec-p256", 1)
    with JwksServer({"keys": [jwk_for(old)]}) as server:
        policy, source = url_policy(tmp_path, server.url)
        token = sign(claims(), old, headers={"kid": kid_of(old)})
        assert policy.authorize(token, "predict", "mnist-cnn").allowed
        server.body = {"keys": [jwk_for(new)]}
        source.clock.now += 31  # past the cool-down, inside the ttl: an unknown kid refetches
        rotated = sign(claims(jti="new"), new, headers={"kid": kid_of(new)})
        assert policy.authorize(rotated, "predict", "mnist-cnn").allowed
        assert not policy.authorize(token, "predict", "mnist-cnn").allowed


def test_an_unchanged_key_keeps_its_cache_entries_across_refreshes(tmp_path, monkeypatch):
    key = private_key("ec-p256", 0)
    with JwksServer({"keys": [jwk_for(key)]}) as server:
        policy, source = url_policy(tmp_path, server.url)
        token = sign(claims(), key, headers={"kid": kid_of(key)})
        assert policy.authorize(token, "predict", "mnist-cnn").allowed
        source.clock.now += 301  # refetched: the same key comes back, as a new object
        monkeypatch.setattr(policy.verifier, "verify_shaped", lambda text: pytest.fail("cache entry was dropped"))
        assert policy.authorize(token, "predict", "mnist-cnn").allowed
        assert server.requests == 2


def test_known_kids_verify_at_once_while_a_refetch_waits_on_a_slow_server(tmp_path):
    key = private_key("ec-p256", 0)
    with JwksServer({"keys": [jwk_for(key)]}) as server:
        policy, source = url_policy(tmp_path, server.url)
        known = sign(claims(), key, headers={"kid": kid_of(key)})
        policy.verifier.verify(known)
        server.delay = 2.0
        source.clock.now += 31  # past the cool-down: an unknown kid may refetch
        errors: list[str] = []

        def unknown(name):
            try:
                policy.verifier.verify(sign(claims(jti=name), key, headers={"kid": name}))
            except TokenError as exc:
                errors.append(str(exc))

        first = threading.Thread(target=unknown, args=("rotated-in",))
        first.start()
        deadline = time.monotonic() + 10
        while server.requests < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.requests == 2  # the refetch is in flight, the server is sleeping
        second = threading.Thread(target=unknown, args=("also-new",))
        second.start()
        started = time.perf_counter()
        assert policy.verifier.verify(known).kid == kid_of(key)
        elapsed = time.perf_counter() - started
        assert first.is_alive(), "the refetch was not slow after all: the test proves nothing"
        first.join(10)
        second.join(10)
        assert elapsed < 0.5, f"a known kid waited {elapsed:.2f} s behind a refetch"
        assert len(errors) == 2 and all("unknown kid" in e for e in errors)
        assert server.requests == 2  # the second unknown kid waited for the same fetch
