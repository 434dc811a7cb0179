"""Policy files: validation with one-line errors, secrets, the verified-claims cache, and the CLI end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.access.keys import write_keypair
from bastion.access.policy_file import load_policy
from bastion.cli import main
from bastion.errors import ConfigError, TokenError
from test_tokens_support import AUD, ISS, claims, es256_policy, kid_of, private_key, sign, write_policy

REPO = Path(__file__).resolve().parents[1]
GATEWAY = REPO / "policies" / "gateway.toml"
GATEWAY_ISS = "https://auth.example.com"

BASE = f"""
audience = "{AUD}"
[[issuers]]
iss = "{ISS}"
algorithm = "ES256"
key_file = "k.pub"
[scopes.predict]
actions = ["predict"]
models = ["*"]
"""


@pytest.fixture
def folder(tmp_path):
    write_keypair(tmp_path / "k", private_key("ec-p256"))
    return tmp_path


@pytest.mark.parametrize("edit, key, problem", [
    (lambda t: "leeway_seconds = 120\n" + t, "leeway_seconds", "out of range"),
    (lambda t: 'required_claims = ["exp", "iss", "aud"]\n' + t, "required_claims", "must include iat, sub"),
    (lambda t: "leway_seconds = 10\n" + t, "leway_seconds", "unknown key"),
    (lambda t: "max_token_bytes = 10\n" + t, "max_token_bytes", "out of range"),
    (lambda t: 'one_time_jti = "yes"\n' + t, "one_time_jti", "expected true or false"),
    (lambda t: t.replace('audience = "bastion-gateway"', ""), "audience", "missing"),
    (lambda t: t.replace('"ES256"', '"HS512"'), "issuers[0].algorithm", "not one of"),
    (lambda t: t.replace('"ES256"', '"none"'), "issuers[0].algorithm", "not one of"),
    (lambda t: t.replace('"ES256"', '"ES384"'), "issuers[0].key_file", "needs an EC secp384r1 key"),
    (lambda t: t.replace('"ES256"', '"HS256"'), "issuers[0].key_file", "HS256 takes secret_file"),
    (lambda t: t.replace('key_file = "k.pub"', 'key_file = "k.pub"\njwks_file = "x.json"'), "issuers[0].jwks_file",
     "exactly one of"),
    (lambda t: t.replace('key_file = "k.pub"', 'key_file = "missing.pub"'), "issuers[0].key_file", "no such key"),
    (lambda t: t.replace('key_file = "k.pub"', 'key_file = "k.pub"\nkid = "../k"'), "issuers[0].kid", "safe key id"),
    (lambda t: t.replace('key_file = "k.pub"', 'key_file = "k.pub"\nsecret = "hunter2"'), "issuers[0].secret",
     "never go in a policy file"),
    (lambda t: t.replace('actions = ["predict"]', 'actions = ["Predict!"]'), "scopes.predict.actions",
     "not an action name"),
    (lambda t: t.replace('models = ["*"]', "models = []"), "scopes.predict.models", "list the models"),
    (lambda t: t.split("[scopes.predict]")[0], "scopes", "define at least one scope"),
    (lambda t: t + '[revoked]\njti = "one"\n', "revoked.jti", "expected a list"),
    (lambda t: t + "[tokens]\n", "tokens", "unknown key"),
])
def test_bad_policies_fail_with_one_line_naming_file_and_key(folder, edit, key, problem):
    path = write_policy(folder, edit(BASE))
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: "), message
    assert re.search(problem, message), message


def test_invalid_toml_and_missing_file(folder):
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_policy(write_policy(folder, "audience = \n"))
    with pytest.raises(ConfigError, match="no such file"):
        load_policy(folder / "nope.toml")
    with pytest.raises(ConfigError, match="no policies file named 'no-such-policy'"):
        load_policy("no-such-policy")


def test_policy_values_are_data_never_code(folder):
    """Nothing named in a policy is imported: a code-looking value is just a bad value."""
    body = BASE.replace('"ES256"', '"__import__(\'os\').system(\'touch pwned\')"')
    with pytest.raises(ConfigError, match="algorithm"):
        load_policy(write_policy(folder, body))
    assert not (folder / "pwned").exists() and not Path("pwned").exists()


def hs256_policy(folder, source_line):
    return write_policy(folder, f"""
audience = "{AUD}"
[[issuers]]
iss = "{ISS}"
algorithm = "HS256"
{source_line}
[scopes.predict]
actions = ["predict"]
models = ["*"]
""")


def test_hs256_secret_from_env_or_file(folder):
    secret = os.urandom(32).hex()
    token = sign(claims(), secret.encode(), "HS256")
    from_env = load_policy(hs256_policy(folder, 'secret_env = "TEST_SECRET"'), environ={"TEST_SECRET": secret})
    assert from_env.authorize(token, "predict", "m").allowed
    (folder / "secret.txt").write_text(secret + "\n")
    from_file = load_policy(hs256_policy(folder, 'secret_file = "secret.txt"'))
    assert from_file.authorize(token, "predict", "m").allowed
    with pytest.raises(TokenError, match="signature does not verify"):
        from_file.verify(sign(claims(), os.urandom(32), "HS256"))


@pytest.mark.parametrize("content, problem", [
    (b"short-secret", "at least 32 bytes"),
    (None, "PEM or SSH key"),
    ("der", "DER public key"),
    ("jwk", "is a JWK"),
])
def test_hs256_secret_that_is_weak_or_a_public_key(folder, content, problem):
    public = (folder / "k.pub").read_bytes()
    if content is None:
        content = public
    elif content == "der":
        from cryptography.hazmat.primitives import serialization

        content = private_key("ec-p256").public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    elif content == "jwk":
        from bastion.access.token_keys import public_jwk

        content = json.dumps(public_jwk(private_key("ec-p256").public_key())).encode()
    (folder / "secret.bin").write_bytes(content)
    with pytest.raises(ConfigError, match=f"issuers\\[0\\].secret_file: .*{problem}"):
        load_policy(hs256_policy(folder, 'secret_file = "secret.bin"'))


def test_hs256_secret_env_missing(folder):
    with pytest.raises(ConfigError, match="issuers\\[0\\].secret_env: environment variable NOPE is not set"):
        load_policy(hs256_policy(folder, 'secret_env = "NOPE"'), environ={})


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


def test_cache_hits_skip_crypto_but_recheck_expiry(tmp_path, monkeypatch):
    policy, key, _ = es256_policy(tmp_path)
    policy.clock = Clock()
    token = sign(claims(exp=int(time.time()) + 100), key)
    assert policy.authorize(token, "predict", "mnist-cnn").allowed
    calls = []
    monkeypatch.setattr(policy.verifier, "verify_shaped", lambda text: calls.append(text))
    assert policy.authorize(token, "predict", "mnist-cnn").allowed  # from the cache
    assert calls == []
    policy.clock.now += 200  # past exp + leeway
    decision = policy.authorize(token, "predict", "mnist-cnn")
    assert not decision.allowed and "expired" in decision.reason
    assert len(policy.cache) == 0


def test_cache_is_bounded_and_optional(tmp_path):
    policy, key, _ = es256_policy(tmp_path, extra="verified_cache_size = 3")
    for i in range(10):
        assert policy.authorize(sign(claims(jti=str(i)), key), "predict", "mnist-cnn").allowed
    assert len(policy.cache) == 3
    uncached, key2, _ = es256_policy(tmp_path, extra="verified_cache_size = 0")
    assert uncached.cache is None
    assert uncached.authorize(sign(claims(), key2), "predict", "mnist-cnn").allowed


def test_rejected_tokens_are_not_cached(tmp_path):
    policy, key, _ = es256_policy(tmp_path, extra='[revoked]\nsubjects = ["bob"]')
    assert not policy.authorize(sign(claims(sub="bob"), key), "predict", "mnist-cnn").allowed
    assert len(policy.cache) == 0


def test_gateway_policy_loads_by_name_and_names_its_missing_key():
    with pytest.raises(ConfigError, match=r"gateway.toml: issuers\[0\].key_file: .*keys/issuer.pub"):
        load_policy("gateway")


def gateway_copy(folder: Path) -> Path:
    """policies/gateway.toml, unchanged except that its key file now exists (the test's key)."""
    (folder / "keys").mkdir()
    write_keypair(folder / "keys" / "issuer", private_key("ec-p256", 5))
    path = folder / "gateway.toml"
    shutil.copy(GATEWAY, path)
    return path


def test_cli_end_to_end_against_the_gateway_policy(tmp_path):
    policy_path = gateway_copy(tmp_path)
    runner = CliRunner()
    key = str(tmp_path / "keys" / "issuer")
    issued = runner.invoke(main, ["token", "issue", "--key", key, "--iss", GATEWAY_ISS, "--aud", "bastion-gateway",
                                  "--sub", "alice", "--scope", "predict", "--ttl", "15m"])
    assert issued.exit_code == 0, issued.output
    token = issued.stdout.strip()
    assert token.count(".") == 2

    allowed = runner.invoke(main, ["token", "verify", token, "--policy", str(policy_path),
                                   "--action", "predict", "--model", "mnist-cnn"])
    assert allowed.exit_code == 0, allowed.output
    assert "allowed: scope 'predict' grants 'predict' on model 'mnist-cnn' to 'alice'" in allowed.stdout

    denied = runner.invoke(main, ["token", "verify", "-", "--policy", str(policy_path),
                                  "--action", "attack", "--model", "mnist-cnn-robust"], input=token + "\n")
    assert denied.exit_code == 1
    assert "denied: no scope held grants 'attack' on model 'mnist-cnn-robust' (token scopes: predict)" in denied.stdout

    as_json = runner.invoke(main, ["token", "verify", token, "--policy", str(policy_path), "--json",
                                   "--action", "train", "--model", "mnist-cnn"])
    assert as_json.exit_code == 1
    record = json.loads(as_json.stdout)
    assert record["allowed"] is False and record["subject"] == "alice" and "no scope" in record["reason"]

    valid = runner.invoke(main, ["token", "verify", token, "--policy", str(policy_path)])
    assert valid.exit_code == 0 and valid.stdout.startswith("valid: token of 'alice'")

    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    bad = runner.invoke(main, ["token", "verify", forged, "--policy", str(policy_path), "--action", "predict"])
    assert bad.exit_code == 1 and "denied: token rejected: signature does not verify" in bad.stdout


def test_cli_issue_options_and_jwks(tmp_path):
    runner = CliRunner()
    key = private_key("ed25519")
    write_keypair(tmp_path / "ed", key)
    issued = runner.invoke(main, ["token", "issue", "--key", str(tmp_path / "ed"), "--iss", ISS, "--aud", AUD,
                                  "--sub", "svc", "--scope", "predict", "--scope", "attack", "--ttl", "90",
                                  "--kid", "ed-1", "--jti", "none"])
    assert issued.exit_code == 0, issued.output
    import jwt

    token = issued.stdout.strip()
    header = jwt.get_unverified_header(token)
    body = jwt.decode(token, key.public_key(), algorithms=["EdDSA"], audience=AUD)
    assert header["alg"] == "EdDSA" and header["kid"] == "ed-1"
    assert body["scope"] == "predict attack" and body["exp"] - body["iat"] == 90 and "jti" not in body

    published = runner.invoke(main, ["token", "jwks", str(tmp_path / "ed.pub")])
    assert published.exit_code == 0, published.output
    document = json.loads(published.stdout)
    assert document["keys"][0]["kid"] == kid_of(key) and document["keys"][0]["alg"] == "EdDSA"

    for args, message in [
        (["--ttl", "soon"], "--ttl 'soon'"),
        (["--ttl", "0s"], "must be more than 0"),
        (["--kid", "../etc"], "not a safe key id"),
        (["--alg", "PS256"], "applies to RSA keys only"),
    ]:
        result = runner.invoke(main, ["token", "issue", "--key", str(tmp_path / "ed"), "--iss", ISS, "--aud", AUD,
                                      "--sub", "svc", *args])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output


def test_cli_hs256_issue_and_errors(tmp_path, monkeypatch):
    runner = CliRunner()
    secret = os.urandom(32).hex()
    monkeypatch.setenv("TEST_HS_SECRET", secret)
    issued = runner.invoke(main, ["token", "issue", "--secret-env", "TEST_HS_SECRET", "--iss", ISS, "--aud", AUD,
                                  "--sub", "batch", "--scope", "predict"])
    assert issued.exit_code == 0, issued.output
    policy = hs256_policy(tmp_path, 'secret_env = "TEST_HS_SECRET"')
    checked = runner.invoke(main, ["token", "verify", issued.stdout.strip(), "--policy", str(policy),
                                   "--action", "predict", "--model", "any"])
    assert checked.exit_code == 0, checked.output
    missing = runner.invoke(main, ["token", "verify", "x.y.z", "--policy", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2 and missing.output.startswith("error: ") and len(missing.output.splitlines()) == 1
    model_only = runner.invoke(main, ["token", "verify", "x.y.z", "--policy", str(policy), "--model", "m"])
    assert model_only.exit_code == 2 and "--model needs --action" in model_only.output
    short = runner.invoke(main, ["token", "issue", "--secret-env", "SHORT", "--iss", ISS, "--aud", AUD, "--sub", "s"],
                          env={"SHORT": "tooshort"})
    assert short.exit_code == 2 and "at least 32 bytes" in short.output


def test_extra_sections_plug_in_through_the_section_table(folder, monkeypatch):
    """A feature adds a top-level section with one line in policy_file.SECTIONS; typos still fail loudly."""
    from bastion.access import policy_file

    def parse_quota(value, context):
        reader = context.reader(value, "quota.", {"per_minute"})
        return int(reader.number("per_minute", 60, 1, 10_000))

    without = write_policy(folder, BASE + "[quota]\nper_minute = 5\n")
    with pytest.raises(ConfigError, match=r"policy.toml: quota: unknown key"):
        load_policy(without)
    monkeypatch.setitem(policy_file.SECTIONS, "quota", parse_quota)
    assert load_policy(without).sections == {"quota": 5}
    assert load_policy(write_policy(folder, BASE)).sections == {}
    for body, problem in (("[quota]\nper_minut = 5\n", r"quota.per_minut: unknown key"),
                          ("[quota]\nper_minute = 0\n", r"quota.per_minute: 0 is out of range"),
                          ("quota = 3\n", r"quota: expected a table")):
        with pytest.raises(ConfigError, match=problem):
            load_policy(write_policy(folder, body + BASE if not body.startswith("[") else BASE + body))
