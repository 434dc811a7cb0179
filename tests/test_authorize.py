"""authorize(): RFC 6749 scopes, model names on both sides, requests on no model, bounded reasons,
token lifetimes and subjects. It never raises and never allows what no scope grants (fuzzed too)."""

from __future__ import annotations

import json
import re
import time

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.access.policy import MAX_REASON_CHARS, ScopeGrant
from bastion.access.tokens import StaticKeys, TokenRules, TokenVerifier, TrustedIssuer, issue_token
from bastion.cli import main
from bastion.errors import ConfigError, TokenError, UsageError
from test_tokens_support import ISS, claims, es256_policy, private_key, sign
from test_tokens_support import SCOPES as BASE_SCOPES

SCOPES = BASE_SCOPES + """
[scopes.admin]
actions = ["*"]
models = ["*"]
"""
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    policy, key, _ = es256_policy(tmp_path_factory.mktemp("authorize"), scopes=SCOPES,
                                  extra="verified_cache_size = 0")
    return policy, key


def token_with(key, **overrides) -> str:
    return sign(claims(**overrides), key)


# --- scopes (RFC 6749 section 3.3) ----------------------------------------------------------------

SEPARATORS = ["\u00a0", "\t", "\n", "\r", "\x0b", "\x0c", "\x1f", "\x1c", "\x85", "\u2028", "\u2029", "\u3000",
              "\u2003", "\u200b", "\ufeff", "\x00"]


@pytest.mark.parametrize("separator", SEPARATORS)
def test_only_the_space_character_separates_scopes(setup, separator):
    policy, key = setup
    token = token_with(key, scope=f"predict{separator}admin")
    for action, model in (("admin", "mnist-cnn"), ("predict", "mnist-cnn"), ("train", None)):
        decision = policy.authorize(token, action, model)
        assert not decision.allowed, (separator, action)
        assert "scope claim is malformed" in decision.reason and f"U+{ord(separator):04X}" in decision.reason


@pytest.mark.parametrize("scope, problem", [
    ("", "empty"), (" predict", "starts or ends with a space"), ("predict ", "starts or ends with a space"),
    ("predict  admin", "empty scope between two spaces"), ('pre"dict', "U+0022"), ("pre\\dict", "U+005C"),
    ("prédict", "U+00E9"), ("predict admin\x7f", "U+007F"), (" ", "starts or ends"),
])
def test_malformed_scope_strings_deny_the_token(setup, scope, problem):
    policy, key = setup
    decision = policy.authorize(token_with(key, scope=scope), "predict", "mnist-cnn")
    assert not decision.allowed and "scope claim is malformed" in decision.reason and problem in decision.reason


@pytest.mark.parametrize("scope, problem", [
    (["predict", "admin extra"], "element 1 is not a scope token"), (["predict", ""], "element 1"),
    (["predict\u00a0admin"], "element 0"), (["predict", 7], "element 1 is a int"), (None, "got null"),
    ({"admin": True}, "got an object"), (True, "got a boolean"),
])
def test_malformed_scope_claims_deny_the_token(setup, scope, problem):
    policy, key = setup
    token = sign({**claims(), "scope": scope}, key)
    decision = policy.authorize(token, "predict", "mnist-cnn")
    assert not decision.allowed and "scope claim" in decision.reason and problem in decision.reason, decision.reason


def test_well_formed_scopes_as_a_string_or_a_list(setup):
    policy, key = setup
    assert policy.authorize(token_with(key, scope="predict redteam"), "attack", "mnist-cnn-robust").allowed
    assert policy.authorize(token_with(key, scope=["predict", "redteam"]), "attack", "mnist-x").allowed
    empty = policy.authorize(token_with(key, scope=[]), "predict", "mnist-cnn")
    assert not empty.allowed and "token scopes: none" in empty.reason
    odd_but_valid = policy.authorize(token_with(key, scope="!#$%&'()*+,-./:;<=>?@[]^_`{|}~ predict"),
                                     "predict", "mnist-cnn")
    assert odd_but_valid.allowed and odd_but_valid.granted_by == "predict"


@pytest.mark.parametrize("name", ["a b", 'pre"dict', "pre\\dict", "x\u00a0y", "tab\there", "", "é", "new\nline"])
def test_policy_scope_names_use_the_same_syntax(tmp_path, name):
    with pytest.raises(ConfigError) as info:  # json.dumps writes a valid TOML basic string
        es256_policy(tmp_path, scopes=f'[scopes.{json.dumps(name)}]\nactions = ["predict"]\nmodels = ["*"]\n')
    message = str(info.value)
    assert "\n" not in message and ": scopes." in message and "scope name" in message, message


def test_policy_scope_names_may_use_the_whole_scope_alphabet(tmp_path):
    policy, key, _ = es256_policy(tmp_path, scopes='[scopes."api:read/v1"]\nactions = ["predict"]\nmodels = ["*"]\n')
    assert policy.authorize(token_with(key, scope="api:read/v1"), "predict", "m").allowed
    with pytest.raises(ConfigError, match="at most 128"):
        es256_policy(tmp_path, scopes=f'[scopes.{"s" * 129}]\nactions = ["predict"]\nmodels = ["*"]\n')


@pytest.mark.parametrize("scope", [" predict", "predict ", "predict  attack", "predict\tattack", "predict\u00a0x", ""])
def test_issue_token_refuses_a_scope_it_would_have_to_rewrite(scope):
    key = private_key("ec-p256")
    with pytest.raises(UsageError, match="scope"):
        issue_token(key, "ES256", iss=ISS, aud="a", sub="s", ttl_seconds=60, scope=scope)


def test_issue_token_writes_a_valid_scope_as_given_and_the_cli_refuses_a_bad_one(tmp_path):
    import jwt

    key = private_key("ec-p256")
    text = issue_token(key, "ES256", iss=ISS, aud="a", sub="s", ttl_seconds=60, scope="predict attack")
    assert jwt.decode(text, options={"verify_signature": False})["scope"] == "predict attack"
    from bastion.access.keys import write_keypair

    write_keypair(tmp_path / "k", key)
    for bad in (" predict", "predict\tattack", ""):
        result = CliRunner().invoke(main, ["token", "issue", "--key", str(tmp_path / "k"), "--iss", ISS, "--aud", "a",
                                           "--sub", "s", "--scope", bad])
        assert result.exit_code == 2 and "scope" in result.output and len(result.output.splitlines()) == 1


@pytest.mark.parametrize("field, value", [("sub", ""), ("iss", ""), ("aud", ""), ("sub", None)])
def test_issue_token_refuses_empty_registered_claims(field, value):
    arguments = {"iss": ISS, "aud": "a", "sub": "s", **{field: value}}
    with pytest.raises(UsageError, match=f"{field} must be a non-empty string"):
        issue_token(private_key("ec-p256"), "ES256", ttl_seconds=60, **arguments)


# --- the request: action and model ---------------------------------------------------------------

class SneakyStr(str):
    """A str subclass that claims to equal everything: authorize must compare the plain text."""

    def __eq__(self, other):
        return True

    def __hash__(self):
        return hash("predict")


class FakeStr:
    """Not a str at all, but says it is one to isinstance()."""

    __class__ = str  # type: ignore[assignment]


BAD_ACTIONS = [None, 1, 1.5, b"predict", ["predict"], {"predict": 1}, "Predict", "predict\n", "*", "", "x" * 65,
               "pre dict", "prédict", FakeStr(), object()]
BAD_MODELS = [1, b"mnist-cnn", ["mnist-cnn"], "mnist-cnn/../../x", "../x", "mnist-*", "*", "a b", "", "m" * 129,
              "mnist-cnn\n", "mnist\u00a0cnn", "mnist-cnn/", ".hidden", "a..b", FakeStr(), object()]


def _ident(value) -> str:
    """A test id that is the same in every pytest-xdist worker (no object addresses)."""
    plain = value is None or type(value) in (str, bytes, int, float, list, dict)
    return repr(value)[:30] if plain else type(value).__name__


@pytest.mark.parametrize("action", BAD_ACTIONS, ids=_ident)
def test_a_bad_action_is_denied_with_a_reason_never_an_exception(setup, action):
    policy, key = setup
    decision = policy.authorize(token_with(key, scope="admin"), action, "mnist-cnn")
    assert not decision.allowed and decision.reason.startswith("denied: bad request:"), decision.reason
    assert decision.action is None or isinstance(decision.action, str)


@pytest.mark.parametrize("model", BAD_MODELS, ids=_ident)
def test_a_bad_model_is_denied_with_a_reason_never_an_exception(setup, model):
    policy, key = setup
    decision = policy.authorize(token_with(key, scope="admin redteam"), "predict", model)
    assert not decision.allowed and decision.reason.startswith("denied: bad request:"), decision.reason
    assert decision.to_dict()["model"] is None or isinstance(decision.to_dict()["model"], str)


def test_globs_match_within_a_name_only(setup):
    policy, key = setup
    redteam = token_with(key, scope="redteam")
    assert policy.authorize(redteam, "attack", "mnist-cnn-robust").allowed
    for model in ("mnist-cnn/../../x", "mnist-/etc/passwd", "mnist-cnn/..", "mnist-a/b"):
        assert not policy.authorize(redteam, "attack", model).allowed, model
    assert not policy.authorize(redteam, "attack", "digits-cnn").allowed


def test_a_str_subclass_cannot_fake_its_way_into_a_grant(setup):
    policy, key = setup
    predict_only = token_with(key, scope="predict")
    assert not policy.authorize(predict_only, SneakyStr("attack"), "mnist-cnn").allowed
    assert not policy.authorize(predict_only, "predict", SneakyStr("other-model")).allowed
    assert policy.authorize(predict_only, SneakyStr("predict"), SneakyStr("mnist-cnn")).allowed


def test_no_particular_model_needs_a_scope_for_every_model(setup):
    policy, key = setup
    denied = policy.authorize(token_with(key, scope="predict redteam"), "predict", None)
    assert not denied.allowed and 'only a scope with models = ["*"] grants' in denied.reason
    allowed = policy.authorize(token_with(key, scope="predict admin"), "list", None)
    assert allowed.allowed and allowed.granted_by == "admin"


def test_policy_model_patterns_are_validated_on_load(tmp_path):
    for pattern, problem in (("mnist-*/..", "not a model name pattern"), ("[ab]*", "not a model name pattern"),
                             ("../x", "not a model name pattern"), ("a b", "not a model name pattern"), ("", "")):
        with pytest.raises(ConfigError) as info:
            es256_policy(tmp_path, scopes=f'[scopes.s]\nactions = ["predict"]\nmodels = ["{pattern}"]\n')
        message = str(info.value)
        assert "\n" not in message and re.search(r"policy\.toml: scopes\.s\.models: ", message) and problem in message
    with pytest.raises(ConfigError, match="models: a model pattern must be a string"):
        ScopeGrant("s", frozenset({"predict"}), (3,))


# --- reasons, lifetimes, subjects ------------------------------------------------------------------

def test_a_token_with_700_scopes_gets_a_short_reason_that_counts_them(setup):
    policy, key = setup
    token = token_with(key, scope=" ".join(f"s{i}" for i in range(700)))
    decision = policy.authorize(token, "train", "mnist-cnn")
    assert not decision.allowed and len(decision.reason) <= MAX_REASON_CHARS
    assert "token holds 700 scopes: s0, s1" in decision.reason


@pytest.mark.parametrize("overrides", [{"sub": "x" * 5000}, {"iss": "https://" + "e" * 5000},
                                       {"scope": "a" * 6000}, {"jti": "j" * 5000}])
def test_every_reason_is_bounded(setup, overrides):
    policy, key = setup
    for scope in ("admin", None):
        payload = {**claims(scope=scope), **overrides}
        decision = policy.authorize(sign(payload, key), "predict", "mnist-cnn")
        assert len(decision.reason) <= MAX_REASON_CHARS, decision.reason


def test_lifetime_is_capped_at_24_hours_by_default(setup):
    policy, key = setup
    now = int(time.time())
    for exp in (10**30, 2**63, now + 86401, 1e300):
        decision = policy.authorize(token_with(key, iat=now, exp=exp, scope="admin"), "predict", "mnist-cnn")
        assert not decision.allowed and "max_lifetime_seconds of 86400" in decision.reason, decision.reason
    assert policy.authorize(token_with(key, iat=now, exp=now + 86400, scope="admin"), "predict", "mnist-cnn").allowed
    far_past = policy.authorize(token_with(key, iat=-10**30, exp=now + 60, scope="admin"), "predict", "mnist-cnn")
    assert not far_past.allowed and "lifetime" in far_past.reason


def test_lifetime_cap_is_set_by_the_policy_and_bounded_by_the_loader(tmp_path):
    policy, key, _ = es256_policy(tmp_path, extra="max_lifetime_seconds = 60")
    now = int(time.time())
    assert policy.authorize(token_with(key, iat=now, exp=now + 60), "predict", "mnist-cnn").allowed
    decision = policy.authorize(token_with(key, iat=now, exp=now + 61), "predict", "mnist-cnn")
    assert not decision.allowed and "lifetime (exp - iat) is 61 s, over this policy's max_lifetime_seconds of 60" \
        in decision.reason
    for value, problem in (("0", "out of range"), ("31622401", "out of range"), ("true", "expected"),
                           ('"1h"', "expected")):
        with pytest.raises(ConfigError, match=f"max_lifetime_seconds: .*{problem}"):
            es256_policy(tmp_path, extra=f"max_lifetime_seconds = {value}")


def test_a_token_without_iat_is_refused_when_the_cap_cannot_be_checked(tmp_path):
    key = private_key("ec-p256")
    rules = TokenRules(audience="bastion-gateway", required_claims=("exp", "iss", "aud", "sub"))
    verifier = TokenVerifier([TrustedIssuer(ISS, "ES256", StaticKeys(ISS, {None: key.public_key()}))], rules)
    with pytest.raises(TokenError, match="no iat claim"):
        verifier.verify(token_with(key, iat=None))


@pytest.mark.parametrize("subject, problem", [("", "non-empty string"), (123, "must be a string"),
                                              ([], "must be a string"), (None, "lacks the required claim 'sub'")])
def test_the_subject_must_be_a_non_empty_string(setup, subject, problem):
    policy, key = setup
    payload = {k: v for k, v in {**claims(scope="admin"), "sub": subject}.items() if v is not None}
    decision = policy.authorize(sign(payload, key), "predict", "mnist-cnn")
    assert not decision.allowed and problem in decision.reason, decision.reason


# --- fuzzing: no wrong allows, no escaped exceptions -----------------------------------------------

SCOPE_CHAR = r"[\x21\x23-\x5b\x5d-\x7e]"
RFC_SCOPE = re.compile(f"{SCOPE_CHAR}+(?: {SCOPE_CHAR}+)*")
GRANTS = {"predict": ({"predict"}, lambda m: m == "mnist-cnn"),
          "redteam": ({"predict", "attack"}, lambda m: m is not None and m.startswith("mnist-")),
          "admin": (None, lambda m: True)}
VALID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def oracle(scopes: list[str], action, model) -> bool:
    """Would an honest reading of the policy allow this? Written apart from the implementation."""
    if type(action) is not str or not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", action):
        return False
    if model is not None and (type(model) is not str or not VALID_NAME.fullmatch(model) or ".." in model):
        return False
    for scope in scopes:
        if scope in GRANTS:
            actions, reaches = GRANTS[scope]
            if (actions is None or action in actions) and reaches(model):
                return True
    return False


scope_pieces = st.sampled_from(["predict", "redteam", "admin", "x", " ", "  ", "\t", "\u00a0", "\n", "\x1f", "\x85",
                                "\u2028", "\u3000", '"', "\\", "é", ""])
scope_strings = st.lists(scope_pieces, max_size=6).map("".join) | st.text(max_size=30)
names = st.sampled_from(["mnist-cnn", "mnist-cnn-robust", "mnist-", "digits-cnn", "mnist-cnn/../../x", "mnist-*",
                         "*", "..", "mnist..cnn", "MNIST-cnn", "mnist-cnn ", "a" * 129])
actions_ = st.sampled_from(["predict", "attack", "train", "admin", "*", "Predict", "predict ", ""])
anything = st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=10), st.text(max_size=20),
                     st.lists(st.text(max_size=5), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                max_size=2))


@FUZZ
@given(scope=scope_strings, action=actions_, model=st.one_of(st.none(), names))
def test_fuzzed_scope_strings_never_allow_wrongly(setup, scope, action, model):
    policy, key = setup
    decision = policy.authorize(token_with(key, scope=scope), action, model)
    expected = RFC_SCOPE.fullmatch(scope) is not None and oracle(scope.split(" "), action, model)
    assert decision.allowed == expected, (scope, action, model, decision.reason)
    assert len(decision.reason) <= MAX_REASON_CHARS


@FUZZ
@given(action=st.one_of(actions_, anything), model=st.one_of(names, anything),
       scope=st.sampled_from(["predict", "redteam", "admin", "predict redteam"]))
def test_fuzzed_arguments_never_raise_or_allow_wrongly(setup, action, model, scope):
    policy, key = setup
    decision = policy.authorize(token_with(key, scope=scope), action, model)
    assert decision.allowed == oracle(scope.split(" "), action, model), (action, model, decision.reason)
    assert decision.reason.startswith(("allowed:", "denied:")) and len(decision.reason) <= MAX_REASON_CHARS


@FUZZ
@given(token=anything, action=st.one_of(actions_, anything), model=st.one_of(names, anything))
def test_fuzzed_everything_never_raises(setup, token, action, model):
    policy, _ = setup
    decision = policy.authorize(token, action, model)
    assert not decision.allowed and decision.reason.startswith("denied:")


def test_from_bastion_access_import_what_the_readme_shows():
    import bastion.access as access

    for name in access.__all__:
        assert getattr(access, name) is not None, name
    from bastion.access import ModelTrust, load_policy, load_verified  # noqa: F401

    from bastion.access.policy_file import load_policy as defined_in

    assert load_policy is defined_in and callable(load_verified) and ModelTrust
    with pytest.raises(AttributeError):
        access.no_such_thing  # noqa: B018



def test_cli_refuses_a_malformed_action_or_model_as_bad_input(tmp_path):
    _, key, path = es256_policy(tmp_path, scopes=SCOPES)
    token = token_with(key, scope="admin")
    for args, message in ((["--action", "Predict!"], "--action: 'Predict!' is not an action name"),
                          (["--action", "predict", "--model", "mnist-cnn/../../x"], "--model: 'mnist-cnn/../../x'")):
        result = CliRunner().invoke(main, ["token", "verify", token, "--policy", str(path), *args])
        assert result.exit_code == 2 and message in result.output and len(result.output.splitlines()) == 1
    ok = CliRunner().invoke(main, ["token", "verify", token, "--policy", str(path), "--action", "predict",
                                   "--model", "mnist-cnn"])
    assert ok.exit_code == 0, ok.output
