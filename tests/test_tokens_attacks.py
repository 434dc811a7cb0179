"""One test per known JWT attack: each token is refused, with its reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from bastion.access import tokens as tokens_module
from bastion.access.token_keys import public_jwk
from bastion.errors import TokenError
from test_tokens_support import (AUD, ISS, JwksServer, b64, claims, es256_policy, forge, kid_of, malleate, private_key,
                                 sign, write_policy)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attacks")
    policy, key, path = es256_policy(folder)
    return policy, key, folder


def rejected(policy, token, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        policy.verify(token)
    decision = policy.authorize(token, "predict", "mnist-cnn")
    assert not decision.allowed and decision.reason.startswith("denied: token rejected:")


def test_a_good_token_is_accepted(setup):
    policy, key, _ = setup
    token = sign(claims(), key, headers={"kid": kid_of(key)})
    assert policy.verify(token).subject == "alice"
    decision = policy.authorize(token, "predict", "mnist-cnn")
    assert decision.allowed and "scope 'predict' grants 'predict'" in decision.reason


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_in_any_case(setup, alg):
    policy, _, _ = setup
    rejected(policy, forge({"alg": alg, "typ": "JWT"}, claims(), b""), "unsigned tokens are never accepted")


def test_missing_alg(setup):
    policy, key, _ = setup
    good = sign(claims(), key)
    header = b64(json.dumps({"typ": "JWT"}).encode())
    rejected(policy, header + good[good.index("."):], "no alg")


def test_alg_not_the_issuers(setup):
    policy, key, _ = setup
    other = private_key("ec-p384")
    rejected(policy, sign(claims(), other, "ES384"), "not allowed: issuer .* is pinned to ES256")


@pytest.mark.parametrize("form", ["pem", "der", "jwk"])
@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048"])
def test_public_key_used_as_hs256_secret(tmp_path, form, key_type):
    key = private_key(key_type)
    from bastion.access.keys import write_keypair
    from bastion.access.policy_file import load_policy

    write_keypair(tmp_path / "k", key)
    algorithm = "ES256" if key_type.startswith("ec") else "RS256"
    policy = load_policy(write_policy(tmp_path, f"""
audience = "{AUD}"
[[issuers]]
iss = "{ISS}"
algorithm = "{algorithm}"
key_file = "k.pub"
[scopes.predict]
actions = ["predict"]
models = ["*"]
"""))
    public = key.public_key()
    secret = {
        "pem": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "der": public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "jwk": json.dumps(public_jwk(public)).encode(),
    }[form]
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    rejected(policy, f"{header}.{payload}.{b64(signature)}", f"alg 'HS256' is not allowed: .* pinned to {algorithm}")


@pytest.mark.parametrize("kid", ["../../../../etc/passwd", "..", "keys/../../x", "k1' OR '1'='1",
                                 "k1;rm -rf /", "k1\x00", "k" * 65, ""])
def test_unsafe_kid(setup, kid):
    policy, key, _ = setup
    rejected(policy, sign(claims(), key, headers={"kid": kid}), "not a safe key id")


@pytest.mark.parametrize("kid", [123, None, ["k1"], {"k": 1}, True])
def test_kid_that_is_not_a_string(setup, kid):
    policy, key, _ = setup
    rejected(policy, sign(claims(), key, headers={"kid": kid}), "kid must be a string")


def test_unknown_kid(setup):
    policy, key, _ = setup
    rejected(policy, sign(claims(), key, headers={"kid": "some-other-key"}), "unknown kid")


@pytest.mark.parametrize("header_name", ["jku", "x5u", "jwk", "x5c"])
def test_key_pointing_headers_are_never_fetched_or_trusted(setup, header_name):
    policy, key, _ = setup
    attacker = private_key("ec-p256", 7)
    attacker_jwk = {**public_jwk(attacker.public_key()), "kid": kid_of(attacker), "alg": "ES256"}
    with JwksServer({"keys": [attacker_jwk]}) as server:
        value = {"jku": server.url + "/jwks.json", "x5u": server.url + "/cert.pem", "jwk": attacker_jwk,
                 "x5c": [base64.b64encode(b"not really a certificate").decode()]}[header_name]
        forged = sign(claims(), attacker, headers={header_name: value, "kid": kid_of(attacker)})
        rejected(policy, forged, "unknown kid|signature does not verify")
        forged_no_kid = sign(claims(), attacker, headers={header_name: value})
        rejected(policy, forged_no_kid, "signature does not verify")
        # The header is ignored, not an error: the real issuer's token still verifies.
        genuine = sign(claims(), key, headers={header_name: value})
        assert policy.verify(genuine).subject == "alice"
        assert server.requests == 0


@pytest.mark.parametrize("crit", [["exp"], ["b64"], ["x-custom"], []])
def test_crit_is_rejected(setup, crit):
    policy, key, _ = setup
    headers = {"crit": crit, "x-custom": 1}
    rejected(policy, sign(claims(), key, headers=headers), "crit")


def test_expired(setup):
    policy, key, _ = setup
    now = int(time.time())
    rejected(policy, sign(claims(iat=now - 1000, exp=now - 100), key), "expired")
    assert policy.verify(sign(claims(iat=now - 1000, exp=now - 10), key)).subject == "alice"  # within leeway


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_yet_valid_beyond_leeway(setup, claim):
    policy, key, _ = setup
    now = int(time.time())
    rejected(policy, sign(claims(**{claim: now + 120}), key), f"not valid yet \\({claim}")
    assert policy.verify(sign(claims(**{claim: now + 10}), key)).subject == "alice"


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub"])
def test_missing_required_claim(setup, claim):
    policy, key, _ = setup
    rejected(policy, sign(claims(**{claim: None}), key), f"lacks the required claim '{claim}'")


def test_policy_required_extra_claim(tmp_path):
    policy, key, _ = es256_policy(tmp_path, extra='required_claims = ["exp", "iat", "iss", "aud", "sub", "tenant"]')
    rejected(policy, sign(claims(), key), "lacks the required claim 'tenant'")
    assert policy.verify(sign(claims(tenant="acme"), key)).claims["tenant"] == "acme"


@pytest.mark.parametrize("value", ["9999999999", "soon", True, [1], {"t": 1}, 1e400])
def test_exp_not_a_number(setup, value):
    policy, key, _ = setup
    # PyJWT itself would take "9999999999" (it calls int()); True is int 1 to it, so already expired.
    rejected(policy, sign(claims(exp=value), key), "exp must be|exp\\) must be|expired")


def test_wrong_audience_and_audience_lists(setup, tmp_path):
    policy, key, _ = setup
    rejected(policy, sign(claims(aud="another-service"), key), "wrong audience")
    rejected(policy, sign(claims(aud=[AUD, "another-service"]), key), "wrong audience.*single string")
    lenient, lenient_key, _ = es256_policy(tmp_path, extra="allow_audience_list = true")
    assert lenient.verify(sign(claims(aud=[AUD, "x"]), lenient_key)).subject == "alice"
    with pytest.raises(TokenError, match="wrong audience"):
        lenient.verify(sign(claims(aud=["x", "y"]), lenient_key))


def test_wrong_issuer(setup):
    policy, key, _ = setup
    rejected(policy, sign(claims(iss="https://evil.example.com"), key), "wrong issuer")


def test_wrong_signature(setup):
    policy, key, _ = setup
    token = sign(claims(), key)
    head, payload, signature = token.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    rejected(policy, f"{head}.{payload}.{flipped}", "signature does not verify")
    rejected(policy, sign(claims(), private_key("ec-p256", 3)), "signature does not verify")
    admin_payload = sign(claims(sub="admin"), key).split(".")[1]
    rejected(policy, f"{head}.{admin_payload}.{signature}", "signature does not verify")


def test_signature_from_another_trusted_issuers_key(tmp_path):
    from bastion.access.keys import write_keypair
    from bastion.access.policy_file import load_policy

    key_a, key_b = private_key("ec-p256", 0), private_key("ec-p256", 1)
    write_keypair(tmp_path / "a", key_a)
    write_keypair(tmp_path / "b", key_b)
    policy = load_policy(write_policy(tmp_path, f"""
audience = "{AUD}"
[[issuers]]
iss = "{ISS}"
algorithm = "ES256"
key_file = "a.pub"
[[issuers]]
iss = "https://partner.example.com"
algorithm = "ES256"
key_file = "b.pub"
[scopes.predict]
actions = ["predict"]
models = ["*"]
"""))
    assert policy.verify(sign(claims(), key_a, headers={"kid": kid_of(key_a)})).issuer == ISS
    partner = sign(claims(iss="https://partner.example.com"), key_b, headers={"kid": kid_of(key_b)})
    assert policy.verify(partner).issuer == "https://partner.example.com"
    # B's key signs a token claiming to be from A: with B's kid, or with none.
    rejected(policy, sign(claims(), key_b, headers={"kid": kid_of(key_b)}), "unknown kid")
    rejected(policy, sign(claims(), key_b), "signature does not verify")
    rejected(policy, sign(claims(), key_b, headers={"kid": kid_of(key_a)}), "signature does not verify")
    rejected(policy, sign(claims(iss="https://unknown.example.com"), key_b), "not trusted")


@pytest.mark.parametrize("segments", [2, 4, 5])
def test_wrong_number_of_segments(setup, segments):
    policy, key, _ = setup
    parts = sign(claims(), key).split(".")
    token = ".".join((parts * 2)[:segments])
    rejected(policy, token, f"has {segments} segments")


def test_non_base64_and_non_json_segments(setup):
    policy, key, _ = setup
    head, payload, signature = sign(claims(), key).split(".")
    rejected(policy, f"!!{head[2:]}.{payload}.{signature}", "header is not base64url")
    rejected(policy, f"{b64(b'not json')}.{payload}.{signature}", "header is not base64url-encoded JSON")
    rejected(policy, f"{b64(b'[1, 2]')}.{payload}.{signature}", "header is not a JSON object")
    rejected(policy, f"{head}.{payload[:-3]}%%%.{signature}", "malformed token")
    rejected(policy, f"{head}.{payload}.{signature[:-2]}**", "malformed token")
    non_json = jwt.api_jws.encode(b"not json at all", key, algorithm="ES256")
    rejected(policy, non_json, "malformed token: Invalid payload string")
    rejected(policy, "é" + sign(claims(), key), "not ASCII")


def test_oversized_token_is_rejected_before_any_parsing_or_crypto(setup, monkeypatch):
    policy, key, _ = setup

    def forbidden(*args, **kwargs):
        raise AssertionError("parsing or crypto ran on an oversized token")

    monkeypatch.setattr(jwt.api_jws.PyJWS, "_load", forbidden)
    monkeypatch.setattr(jwt.api_jws.PyJWS, "_verify_signature", forbidden)
    monkeypatch.setattr(tokens_module, "decode_segment", forbidden)
    monkeypatch.setattr(tokens_module.jwt, "decode_complete", forbidden)
    monkeypatch.setattr("bastion.access.policy.token_digest", forbidden)
    big = sign(claims(pad="x" * 9000), key)
    rejected(policy, big, "over this policy's limit of 8192")
    rejected(policy, big.encode(), "over this policy's limit of 8192")
    rejected(policy, "a" * 10_000_000, "over this policy's limit")


def test_revoked_jti_and_subject(tmp_path):
    policy, key, _ = es256_policy(tmp_path, extra='[revoked]\njti = ["stolen-1"]\nsubjects = ["mallory"]')
    rejected(policy, sign(claims(jti="stolen-1"), key), "revoked: jti 'stolen-1'")
    rejected(policy, sign(claims(sub="mallory", jti="j-9"), key), "revoked: subject 'mallory'")
    token = sign(claims(jti="j-10"), key)
    assert policy.authorize(token, "predict", "mnist-cnn").allowed  # now cached
    policy.revoke(jti="j-10")
    rejected(policy, token, "revoked: jti 'j-10'")


def test_replayed_one_time_jti_including_malleated_twin(tmp_path, setup):
    plain_policy = setup[0]
    policy, key, _ = es256_policy(tmp_path, extra="one_time_jti = true")
    token = sign(claims(jti="once-1"), key)
    twin = malleate(token)
    assert twin != token
    assert plain_policy.verify(twin).jti == "once-1"  # the twin really is a valid signature
    first = policy.authorize(token, "predict", "mnist-cnn")
    assert first.allowed, first.reason
    replay = policy.authorize(token, "predict", "mnist-cnn")
    assert not replay.allowed and "replayed token: jti 'once-1'" in replay.reason
    twin_replay = policy.authorize(twin, "predict", "mnist-cnn")
    assert not twin_replay.allowed and "replayed token: jti 'once-1'" in twin_replay.reason
    rejected(policy, sign(claims(jti=None), key), "lacks the required claim 'jti'")
    other = sign(claims(jti="once-2"), key)
    assert policy.verify(other).jti == "once-2"
    rejected(policy, other, "replayed")


def test_scope_must_cover_action_and_model(setup):
    policy, key, _ = setup
    predict_only = sign(claims(scope="predict"), key)
    denied = policy.authorize(predict_only, "attack", "mnist-cnn")
    assert not denied.allowed and "no scope held grants 'attack' on model 'mnist-cnn'" in denied.reason
    denied = policy.authorize(predict_only, "predict", "resnet-50")
    assert not denied.allowed and "'predict' on model 'resnet-50' (token scopes: predict)" in denied.reason
    unknown = policy.authorize(sign(claims(scope="superuser admin"), key), "predict", "mnist-cnn")
    assert not unknown.allowed
    no_scope = policy.authorize(sign(claims(scope=None), key), "predict", "mnist-cnn")
    assert not no_scope.allowed and "token scopes: none" in no_scope.reason
    redteam = sign(claims(scope="predict redteam"), key)
    allowed = policy.authorize(redteam, "attack", "mnist-cnn-robust")
    assert allowed.allowed and allowed.granted_by == "redteam"
    assert allowed.to_dict()["subject"] == "alice" and allowed.to_dict()["scopes"] == ["predict", "redteam"]
    rejected(policy, sign(claims(scope=42), key), "scope claim must be")
    with pytest.raises(Exception, match="no scope held grants"):
        policy.authorize(predict_only, "train", "mnist-cnn").raise_if_denied()


def test_ecdsa_signature_components_are_not_der(setup):
    """A DER-encoded ECDSA signature (what cryptography emits) is not a JWS signature."""
    policy, key, _ = setup
    head, payload, _ = sign(claims(), key).split(".")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    der = key.sign(f"{head}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
    decode_dss_signature(der)  # it is a valid DER signature over the same input
    rejected(policy, f"{head}.{payload}.{b64(der)}", "signature does not verify")
