"""Model trust in the policy: the [models] and [limits] sections, the one decision, and the commands that use it."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from bastion.access.model_trust import trusted_model
from bastion.access.policy_file import load_policy
from bastion.cli import main
from bastion.errors import ConfigError, ModelRefused
from serve_helpers import LIMITS, POLICY, world, write_policy


@pytest.fixture(scope="module")
def policy():
    return load_policy(world().policy_path)


def _policy_text(edit) -> str:
    return edit(POLICY.replace("{limits}", LIMITS))


@pytest.mark.parametrize("edit, key, problem", [
    (lambda t: t.replace('signer_keys = ["signer.key.pub"]', "signer_keys = []"), "models.signer_keys",
     "at least one trusted public key"),
    (lambda t: t.replace('signer_keys = ["signer.key.pub"]', 'signer_keys = ["missing.pub"]'), "models.signer_keys",
     "no such key file"),
    (lambda t: t.replace('attester_keys = ["attester.key.pub"]', ""), "models.rules[0].require", "attester keys"),
    (lambda t: t.replace("[models]", "[models]\nsigners = 1"), "models.signers", "unknown key"),
    (lambda t: t.replace('require = "robust_accuracy[0.3] >= 0.8 and flags == 0"', 'require = "accuracy > 1"'),
     "models.rules[0].require", "unknown field 'accuracy'"),
    (lambda t: t.replace('detector = "flag"', 'detector = "loud"'), "models.rules[0].detector", "not one of off"),
    (lambda t: t.replace("detector_fpr = 0.05\ncalibration_samples = 50\n\n[[models.rules]]\nmodels = [\"weak\"",
                         "detector_fpr = 2\ncalibration_samples = 50\n\n[[models.rules]]\nmodels = [\"weak\""),
     "models.rules[0].detector_fpr", "out of range"),
    (lambda t: t.replace('models = ["mnist-cnn-robust"]\nrequire', 'models = ["../x"]\nrequire'),
     "models.rules[0].models", "not a model name pattern"),
    (lambda t: t.replace('models = ["rejecting"]', 'models = ["rejecting"]\nattestation_required = false\n'
                                                  'require = "n >= 1"'), "models.rules[2].attestation_required",
     "cannot be false"),
    (lambda t: t.replace('models = ["rejecting"]', 'models = ["rejecting"]\ncalibration = "nowhere.npz"'),
     "models.rules[2].calibration", "existing .npz"),
    (lambda t: t.replace("max_batch = 32", "max_batch = 0"), "models.rules[3].max_batch", "out of range"),
    (lambda t: t.replace("[limits.scopes.limited]", "[limits.scopes.unknown]"), "limits.scopes.unknown",
     "no such scope"),
    (lambda t: t.replace("rate = 0.05", "rate = 0"), "limits.scopes.limited.rate", "out of range"),
    (lambda t: t.replace("max_in_flight = 64", "max_in_flight = 0"), "limits.max_in_flight", "out of range"),
    (lambda t: t.replace("max_in_flight = 64", "max_inflight = 64"), "limits.max_inflight", "unknown key"),
])
def test_bad_models_and_limits_sections_fail_with_one_line_naming_file_and_key(edit, key, problem):
    path = world().root / "bad.toml"
    path.write_text(_policy_text(edit))
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: {key}: "), message
    assert re.search(problem, message), message


def test_policy_sections_parse(policy):
    models = policy.models
    assert len(models.signer_keys) == 1 and len(models.attester_keys) == 1
    assert models.rule_for("mnist-cnn-robust").detector == "flag"
    assert models.rule_for("swap-anything") is models.rule_for("plain")
    assert models.rule_for("unlisted") is None
    assert policy.limits.for_scope("limited").burst == 3 and policy.limits.for_scope("predict") is None
    bare = world().root / "no-models.toml"
    bare.write_text(POLICY.split("[models]")[0])
    assert load_policy(bare).models is None  # a policy without [models] still loads (and serves no model)


@pytest.mark.parametrize("name, kind", [
    ("unsigned", "unsigned"), ("tampered", "tampered"), ("wrong-signer", "signature"), ("weak", "requirement"),
    ("other-digest", "other_digest"), ("no-attestation", "no_attestation"),
])
def test_the_decision_names_the_check_that_said_no(policy, name, kind):
    with pytest.raises(ModelRefused) as info:
        with trusted_model(world().repository / name, policy.models):
            pass
    assert info.value.kind == kind


def test_the_decision_refuses_models_no_rule_names_and_yields_the_verified_copy(policy):
    with pytest.raises(ModelRefused, match="named by no \\[\\[models.rules\\]\\] entry") as info:
        with trusted_model(world().repository / "plain", policy.models, name="unlisted"):
            pass
    assert info.value.kind == "not_in_policy"
    with trusted_model(world().repository / "mnist-cnn-robust", policy.models) as trusted:
        assert (trusted.copy / "model.safetensors").is_file() and trusted.copy != trusted.path
        assert trusted.attestation.evaluation["n"] == 20
        copy = trusted.copy
    assert not copy.exists()  # the private copy is gone once the caller is done with it


def test_bastion_verify_with_a_policy_uses_the_same_decision():
    runner = CliRunner()
    repo, policy_path = world().repository, world().policy_path
    ok = runner.invoke(main, ["verify", str(repo / "mnist-cnn-robust"), "--policy", str(policy_path)])
    assert ok.exit_code == 0, ok.output
    assert "may be served as 'mnist-cnn-robust'" in ok.output and "requirement met: flags==0" in ok.output
    as_json = runner.invoke(main, ["verify", str(repo / "mnist-cnn-robust"), "--policy", str(policy_path), "--json"])
    assert json.loads(as_json.output)["robustness"]["requirements_met"][0].startswith("robust_accuracy[0.3]")
    refused = runner.invoke(main, ["verify", str(repo / "weak"), "--policy", str(policy_path)])
    assert refused.exit_code == 1 and "requirement robust_accuracy>=0.95 not met" in refused.output
    renamed = runner.invoke(main, ["verify", str(repo / "plain"), "--policy", str(policy_path), "--name", "nobody"])
    assert renamed.exit_code == 1 and "named by no [[models.rules]] entry" in renamed.output
    usage = runner.invoke(main, ["verify", str(repo / "plain"), "--policy", str(policy_path), "--key", "k.pub"])
    assert usage.exit_code == 2 and "drop --key" in usage.output
    assert runner.invoke(main, ["verify", str(repo / "plain")]).exit_code == 2


def test_serve_check_and_strict(tmp_path):
    runner = CliRunner()
    base = ["serve", "--repository", str(world().repository), "--policy", str(world().policy_path),
            "--audit-log", str(tmp_path / "audit.jsonl")]
    check = runner.invoke(main, base + ["--check"])
    assert check.exit_code == 1, check.output
    assert re.search(r"^serve   plain version 1: sha256:", check.output, re.M)
    assert re.search(r"^refuse  tampered: tampered: .*file 'bastion.toml' changed", check.output, re.M)
    assert re.search(r"^refuse  weak: requirement: .*not met \(attested value 0.85\)", check.output, re.M)
    assert not (tmp_path / "audit.jsonl").exists()  # a check writes no audit records
    rows = json.loads(runner.invoke(main, base + ["--check", "--json"]).output)
    assert {r["name"] for r in rows["models"] if r["served"]} >= {"plain", "mnist-cnn-robust", "rejecting"}
    strict = runner.invoke(main, base + ["--strict", "--port", "0"])
    assert strict.exit_code == 1
    assert re.search(r"error: --strict: \d+ model\(s\) refused \(.*tampered", strict.output)
    assert "listening" not in strict.output
    missing = runner.invoke(main, ["serve", "--repository", str(tmp_path / "none"), "--policy",
                                   str(world().policy_path)])
    assert missing.exit_code == 2 and "no such folder" in missing.output


def test_every_clean_policy_in_the_helpers_loads(tmp_path):
    assert load_policy(write_policy(world().root / "again.toml")).models is not None
