"""Fuzzing: nothing is accepted without a valid signature from a trusted key, and nothing but
TokenError ever escapes verification (authorize never raises at all)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import jwt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.access.keys import write_keypair
from bastion.access.policy_file import load_policy
from bastion.errors import TokenError
from test_tokens_support import AUD, ISS, b64, claims, forge, kid_of, private_key, sign, write_policy

PARTNER = "https://partner.example.com"
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TRUSTED = private_key("ec-p256", 0)
UNTRUSTED = private_key("ec-p256", 9)
SECRET = b"0123456789abcdef0123456789abcdef-fuzz"


def _policies():
    folder = Path(tempfile.mkdtemp(prefix="bastion-fuzz-"))
    write_keypair(folder / "trusted", TRUSTED)
    (folder / "secret").write_bytes(SECRET)
    scopes = '[scopes.predict]\nactions = ["predict"]\nmodels = ["*"]\n'
    single = load_policy(write_policy(folder, f"""
audience = "{AUD}"
[[issuers]]
iss = "{ISS}"
algorithm = "ES256"
key_file = "trusted.pub"
{scopes}""", "single.toml"))
    multi = load_policy(write_policy(folder, f"""
audience = "{AUD}"
one_time_jti = true
[[issuers]]
iss = "{ISS}"
algorithm = "ES256"
key_file = "trusted.pub"
[[issuers]]
iss = "{PARTNER}"
algorithm = "HS256"
secret_file = "secret"
{scopes}""", "multi.toml"))
    return single, multi


SINGLE, MULTI = _policies()
GOOD = sign(claims(), TRUSTED, headers={"kid": kid_of(TRUSTED)})


def independently_valid(token: str) -> bool:
    """Does a trusted key really sign this token (checked with bare PyJWT, no policy)?"""
    for key, alg in ((TRUSTED.public_key(), "ES256"), (SECRET, "HS256")):
        try:
            jwt.api_jws.decode(token, key, algorithms=[alg])
            return True
        except jwt.PyJWTError:
            pass
    return False


def check(token) -> None:
    for policy in (SINGLE, MULTI):
        try:
            verified = policy.verifier.verify(token)
        except TokenError:
            pass
        else:
            assert independently_valid(token), f"accepted without a trusted signature: {token!r}"
            assert verified.claims["aud"] == AUD and verified.issuer in (ISS, PARTNER)
        decision = policy.authorize(token, "predict", "mnist-cnn")
        assert decision.reason.startswith(("allowed:", "denied:"))
        if decision.allowed:
            assert independently_valid(token)


mutation = st.tuples(st.sampled_from(["replace", "insert", "delete", "swap", "truncate"]),
                     st.integers(min_value=0, max_value=len(GOOD) - 1),
                     st.sampled_from(list("AZaz09-_.=+/ \x00é")))


@FUZZ
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_real_tokens(mutations):
    token = GOOD
    for kind, index, char in mutations:
        index = min(index, max(len(token) - 1, 0))
        if kind == "replace":
            token = token[:index] + char + token[index + 1:]
        elif kind == "insert":
            token = token[:index] + char + token[index:]
        elif kind == "delete":
            token = token[:index] + token[index + 1:]
        elif kind == "swap":
            parts = token.split(".")
            token = ".".join(reversed(parts)) if index % 2 else ".".join(parts[1:] + parts[:1])
        else:
            token = token[:index]
    check(token)


@FUZZ
@given(st.one_of(st.binary(max_size=600), st.text(max_size=600),
                 st.lists(st.text(alphabet="ABCxyz019-_=", max_size=80), min_size=1, max_size=6).map(".".join)))
def test_random_bytes_and_text(value):
    check(value)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children,
                                                                                max_size=4)),
    max_leaves=12)
header_keys = st.sampled_from(["alg", "kid", "typ", "crit", "jku", "x5u", "x5c", "jwk", "b64", "cty", "zip"])
claim_keys = st.sampled_from(["iss", "aud", "sub", "exp", "iat", "nbf", "jti", "scope"])


@FUZZ
@given(st.dictionaries(header_keys, json_values, max_size=5), st.dictionaries(claim_keys, json_values, max_size=6),
       st.sampled_from(["forged", "untrusted", "trusted"]), st.booleans())
def test_random_headers_and_claims(header_extra, claim_overrides, signer, start_valid):
    payload = {**claims(), **claim_overrides} if start_valid else dict(claim_overrides)
    header = {"alg": "ES256", **header_extra}
    if signer == "forged":
        token = forge(header, payload, os.urandom(64))
    else:
        key = TRUSTED if signer == "trusted" else UNTRUSTED
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
        es256 = jwt.algorithms.get_default_algorithms()["ES256"]
        token = f"{signing_input}.{b64(es256.sign(signing_input.encode(), key))}"
    check(token)
