"""Robustness attestations: bound to the model's digest, signed, and checked against a requirement."""

from __future__ import annotations

import base64
import json

import pytest

from bastion.access.attestation import PREDICATE_TYPE, attest_model, verify_attestation
from bastion.access.keys import generate_private_key
from bastion.access.requirements import parse_requirement
from bastion.access.signing import sign_model, verify_model
from bastion.errors import UsageError, VerificationError
from tests.report_helpers import hand_made_report
from tests.signing_helpers import bench_report, make_model_dir

REPORT = bench_report({0.1: 0.91, 0.3: 0.62}, n=200, clean=0.98, suite="standard",
                      passed=("unavailable_gradients",), fired=("accuracy_rises_with_eps",),
                      per_sample="carried along untouched")


@pytest.fixture(scope="module")
def key():
    return generate_private_key("ec-p256")


@pytest.fixture
def attested(tmp_path, key):
    model = make_model_dir(tmp_path)
    sign_model(model, key)
    result = attest_model(model, REPORT, key)
    return model, result


def test_attestation_subject_is_the_signature_digest(attested, key):
    model, result = attested
    assert result.attestation == model / "robustness.att.json"
    signed = verify_model(model, key.public_key())  # the attestation file inside does not break the signature
    assert result.root_digest == signed.root_digest
    bundle = json.loads(result.attestation.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert statement["predicateType"] == PREDICATE_TYPE
    assert statement["subject"][0]["digest"]["sha256"] == signed.root_digest
    evaluation = statement["predicate"]["evaluation"]
    assert evaluation["suite"] == "standard" and evaluation["n"] == 200
    assert evaluation["flags"] == ["accuracy_rises_with_eps"]
    assert statement["predicate"]["report"]["per_sample"] == "carried along untouched"


def test_requirement_met(attested, key):
    model, result = attested
    ok = verify_attestation(model, key.public_key(), result.attestation,
                            require="robust_accuracy>=0.6 and clean_accuracy>=95% and robust_accuracy[0.1]>0.9")
    assert len(ok.requirements_met) == 3


def test_requirement_not_met(attested, key):
    model, result = attested
    with pytest.raises(VerificationError, match=r"requirement robust_accuracy>=0.8 not met \(attested value 0.62\)"):
        verify_attestation(model, key.public_key(), result.attestation, require="robust_accuracy>=0.8")
    with pytest.raises(VerificationError, match=r"requirement flags==0 not met \(attested value 1\)"):
        verify_attestation(model, key.public_key(), result.attestation, require="flags==0")
    with pytest.raises(VerificationError, match=r"no robust accuracy attested at eps 0.2 \(attested eps: 0.1, 0.3\)"):
        verify_attestation(model, key.public_key(), result.attestation, require="robust_accuracy[0.2]>=0.5")


def test_wrong_subject_model_changed(attested, key):
    model, result = attested
    (model / "weights.bin").write_bytes(b"retrained")
    with pytest.raises(VerificationError, match=r"attests a different model \('model', digest .*the model changed"):
        verify_attestation(model, key.public_key(), result.attestation)


def test_wrong_subject_other_model(attested, key, tmp_path):
    _, result = attested
    other = make_model_dir(tmp_path / "other")
    with pytest.raises(VerificationError, match=r"attests a different model"):
        verify_attestation(other, key.public_key(), result.attestation)


def test_tampered_predicate(attested, key):
    model, result = attested
    bundle = json.loads(result.attestation.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["evaluation"]["robust_accuracy"] = [{"label": "", "eps": 0.3, "accuracy": 0.99}]
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    result.attestation.write_text(json.dumps(bundle))
    with pytest.raises(VerificationError, match=r"robustness\.att\.json: the signature does not verify"):
        verify_attestation(model, key.public_key(), result.attestation, require="robust_accuracy>=0.9")


def test_attestation_by_another_key(attested):
    model, result = attested
    with pytest.raises(VerificationError, match=r"signed by a different key"):
        verify_attestation(model, generate_private_key("ec-p256").public_key(), result.attestation)


def test_a_model_signature_is_not_an_attestation(attested, key):
    model, _ = attested
    with pytest.raises(VerificationError, match=r"not a bastion robustness attestation"):
        verify_attestation(model, key.public_key(), model / "model.sig")


def test_attest_reads_attack_command_output_and_blake3(tmp_path, key):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"w" * 100)
    attack_summary = {"attack": "pgd", "n": 50, "norm": "linf", "clean_accuracy": 0.9,
                      "results": [{"eps": 0.1, "robust_accuracy": 0.7}, {"eps": 0.3, "robust_accuracy": 0.2}]}
    result = attest_model(weights, attack_summary, key, hash_type="blake3")
    assert result.attestation == tmp_path / "w.safetensors.att.json"
    ok = verify_attestation(weights, key.public_key(), result.attestation, require="robust_accuracy[0.1]>=0.7")
    assert ok.hash_type == "blake3" and ok.evaluation["threat_models"] == [{"norm": "linf", "eps": [0.1, 0.3]}]


def _edited(edit):
    report = bench_report({0.3: 0.5}, n=10, clean=0.9)
    edit(report)
    return report


@pytest.mark.parametrize("report, message", [
    (_edited(lambda r: r["summary"].pop("n")), r"needs the sample count"),
    (_edited(lambda r: r["summary"].pop("clean_accuracy")), r"needs 'clean_accuracy'"),
    (_edited(lambda r: r.pop("results")), r"needs 'robust_accuracy'"),
    (_edited(lambda r: r["summary"].update(clean_accuracy=98)), r"'clean_accuracy' must be a fraction"),
    (_edited(lambda r: r["results"][0].update(robust_accuracy="high")), r"holds 'high', not a number"),
    ([1, 2], r"must be a JSON object"),
])
def test_malformed_reports_are_refused_clearly(tmp_path, key, report, message):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w")
    with pytest.raises(UsageError, match=message):
        attest_model(weights, report, key)


@pytest.mark.parametrize("text", ["robust_accuracy >= 0.8 or n>1", "__import__('os')", "robust_accuracy>=x",
                                  "n[0.3]>=1", "", "robust_accuracy>=nan"])
def test_requirement_language_refuses_anything_else(text):
    with pytest.raises(UsageError, match=r"--require"):
        parse_requirement(text)


BENCH_SHAPED = {  # the layout bastion.evaluation.report writes for `bastion bench`
    "schema": "bastion.bench.report/1", "created": "2026-01-01T00:00:00Z",
    "summary": {"model": "mnist-cnn", "suite": "standard", "norm": "linf", "eps": 0.3, "n": 500,
                "clean_accuracy": 0.986, "robust_accuracy": 0.002, "indicators_fired": ["transfer_failure"]},
    "suite": {"name": "standard", "norm": "linf", "epsilons": [0.1, 0.3]},
    "results": [
        {"eps": 0.1, "robust_accuracy": 0.61, "robust_accuracy_raw": 0.61, "robust_indices": [1, 2],
         "per_class": [{"class": 0, "n": 50, "clean_accuracy": 1.0, "robust_accuracy": 0.9}]},
        {"eps": 0.3, "robust_accuracy": 0.002, "robust_accuracy_raw": 0.004, "robust_indices": [7],
         "per_class": [{"class": 0, "n": 50, "clean_accuracy": 1.0, "robust_accuracy": 0.0}]},
    ],
    "indicators": [{"key": "transfer_failure", "status": "fired", "title": "Transfer failure", "finding": "..."},
                   {"key": "zero_gradients", "status": "ok", "title": "Zero gradients", "finding": ""}],
}


def test_bench_report_layout_is_understood(tmp_path, key):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"w" * 10)
    result = attest_model(weights, BENCH_SHAPED, key)
    evaluation = result.evaluation
    assert evaluation["n"] == 500 and evaluation["suite"] == "standard"
    assert [(e["eps"], e["accuracy"]) for e in evaluation["robust_accuracy"]] == [(0.1, 0.61), (0.3, 0.002)]
    assert evaluation["flags"] == ["transfer_failure"]
    assert evaluation["threat_models"] == [{"norm": "linf", "eps": [0.1, 0.3]}]
    ok = verify_attestation(weights, key.public_key(), result.attestation, require="robust_accuracy[0.1]>=0.6")
    assert ok.requirements_met
    with pytest.raises(VerificationError, match=r"flags==0 not met"):
        verify_attestation(weights, key.public_key(), result.attestation, require="flags==0")


def test_reports_with_intervals_attest_and_verify(tmp_path, key):
    """A report as `bastion bench` writes it now (counts and intervals beside each accuracy) attests as before."""
    report = hand_made_report({0.1: set(range(16)), 0.3: set(range(12))}, n=20, fired=("loss-still-rising",))
    assert report["results"][1]["robust_accuracy_ci"]["k"] == 12
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"w" * 10)
    result = attest_model(weights, report, key)
    assert result.evaluation == {
        "suite": "hand", "threat_models": [{"norm": "linf", "eps": [0.1, 0.3]}], "n": 20, "clean_accuracy": 1.0,
        "robust_accuracy": [{"label": "linf", "eps": 0.1, "accuracy": 0.8}, {"label": "linf", "eps": 0.3,
                                                                              "accuracy": 0.6}],
        "flags": ["loss-still-rising"]}
    ok = verify_attestation(weights, key.public_key(), result.attestation,
                            require="robust_accuracy[0.3] >= 0.6 and clean_accuracy >= 1")
    assert ok.requirements_met == ("robust_accuracy[0.3]>=0.6 (attested 0.6)", "clean_accuracy>=1 (attested 1)")
    with pytest.raises(VerificationError, match=r"flags==0 not met \(attested value 1\)"):
        verify_attestation(weights, key.public_key(), result.attestation, require="flags==0")
