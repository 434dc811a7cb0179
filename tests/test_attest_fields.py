"""Attestations under hostile input: report fields checked by type and range on attest and on verify,
known report schemas only, clear exit codes, and bastion's own file names never hiding a directory."""

from __future__ import annotations

import base64
import copy
import json
import shutil

import pytest
from click.testing import CliRunner

from bastion.access.attestation import PREDICATE_TYPE, attest_model, verify_attestation
from bastion.access.envelope import sign_statement
from bastion.access.keys import generate_private_key, write_keypair
from bastion.access.signing import sign_model, verify_model
from bastion.cli import main
from bastion.errors import UsageError, VerificationError
from tests.signing_helpers import bench_report, make_model_dir


@pytest.fixture(scope="module")
def key():
    return generate_private_key("ec-p256")


@pytest.fixture
def runner(monkeypatch):
    monkeypatch.delenv("BASTION_KEY_PASSPHRASE", raising=False)
    return CliRunner()


def edited(path: str, value):
    """A valid bench report with the field at ``path`` (dotted; ``results.0.eps``) set to ``value``."""
    report = bench_report({0.1: 0.7, 0.3: 0.5}, n=100, clean=0.9)
    *parents, last = path.split(".")
    target = report
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[int(last) if isinstance(target, list) else last] = value
    return report


ATTACK_SUMMARY = {"attack": "pgd", "params": {"steps": 40}, "model": "mnist-cnn", "data": "mnist", "n": 50,
                  "norm": "linf", "clean_accuracy": 0.9,
                  "results": [{"eps": 0.1, "robust_accuracy": 0.7, "seconds": 1.0}]}

BAD_REPORTS = [
    (edited("summary.n", 10**400), r"positive integer 'summary.n' below 1,000,000,000 \(got an integer of about 401"),
    (edited("summary.n", 10**9), r"below 1,000,000,000"),
    (edited("summary.n", "100"), r"positive integer 'summary.n'"),
    (edited("summary.n", 100.0), r"positive integer 'summary.n'"),
    (edited("summary.n", True), r"positive integer 'summary.n'"),
    (edited("summary.n", 0), r"positive integer"),
    (edited("summary.n", -3), r"positive integer"),
    (edited("summary.clean_accuracy", "0.9"), r"'summary.clean_accuracy' holds '0.9', not a number between 0 and 1"),
    (edited("summary.clean_accuracy", float("nan")), r"holds nan"),
    (edited("summary.clean_accuracy", float("inf")), r"holds inf"),
    (edited("summary.clean_accuracy", -0.1), r"must be a fraction between 0 and 1"),
    (edited("summary.clean_accuracy", True), r"holds True"),
    (edited("results.0.robust_accuracy", "0.7"), r"'results\[0\].robust_accuracy' holds '0.7'"),
    (edited("results.1.robust_accuracy", 1.5), r"must be a fraction"),
    (edited("results.0.eps", -0.1), r"'results\[0\].eps' must be a finite, non-negative number"),
    (edited("results.0.eps", "0.1"), r"'results\[0\].eps' must be a finite"),
    (edited("results.0.eps", float("inf")), r"'results\[0\].eps' must be a finite"),
    (edited("results.0.eps", None), r"'results\[0\].eps' must be a finite"),
    (edited("results", []), r"'results' holds no robust accuracy values"),
    (edited("results", {"0.3": 0.5}), r"'results' must be a list"),
    (edited("results", [{"eps": 0.1, "robust_accuracy": 0.5}] * 1001), r"at most 1000"),
    (edited("summary.indicators_fired", "gradients"), r"'summary.indicators_fired' must be a list"),
    (edited("summary.indicators_fired", [1]), r"'summary.indicators_fired\[0\]' must be a non-empty string"),
    (edited("summary.indicators_fired", ["x" * 201]), r"at most 200 characters"),
    (edited("summary.indicators_fired", ["f"] * 101), r"at most 100 are read"),
    (edited("summary.suite", 7), r"'summary.suite' must be a non-empty string"),
    (edited("summary.norm", None), r"'summary.norm' must be a non-empty string"),
    (edited("summary", [1]), r"'summary' must be a JSON object"),
    (edited("schema", "bastion.bench.report/2"), r"unknown report schema 'bastion.bench.report/2'; expected a "
                                                 r"`bastion bench` report.json \(schema 'bastion.bench.report/1'\)"),
    (edited("schema", "bastion.bench/1"), r"unknown report schema"),
    (edited("schema", None), r"unknown report schema"),
    ({"n": 10, "clean_accuracy": 0.9, "robust_accuracy": 0.5}, r"not a report bastion knows .*`bastion attack --json`"),
    ({**ATTACK_SUMMARY, "n": 10**400}, r"positive integer 'n'"),
    ({**ATTACK_SUMMARY, "clean_accuracy": "high"}, r"'clean_accuracy' holds 'high'"),
    ({**ATTACK_SUMMARY, "results": [{"eps": 0.1}]}, r"needs 'robust_accuracy'"),
    ({**ATTACK_SUMMARY, "attack": ["pgd"]}, r"'attack' must be a non-empty string"),
    ("report", r"must be a JSON object"),
]


@pytest.mark.parametrize("report, message", BAD_REPORTS, ids=[m[:40] for _, m in BAD_REPORTS])
def test_attest_checks_every_field_by_type_and_range(tmp_path, key, report, message):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w")
    with pytest.raises(UsageError, match=message) as info:
        attest_model(weights, report, key)
    assert "\n" not in str(info.value) and len(str(info.value)) < 500


def test_both_known_shapes_attest(tmp_path, key):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w")
    bench = attest_model(weights, bench_report({0.3: 0.5}, n=7, fired=("gradients",)), key).evaluation
    assert bench == {"suite": "standard", "threat_models": [{"norm": "linf", "eps": [0.3]}], "n": 7,
                     "clean_accuracy": 0.98, "robust_accuracy": [{"label": "linf", "eps": 0.3, "accuracy": 0.5}],
                     "flags": ["gradients"]}
    attack = attest_model(weights, ATTACK_SUMMARY, key).evaluation
    assert attack["suite"] is None and attack["n"] == 50 and attack["flags"] == []


def _resign_with_evaluation(path, key, evaluation):
    """Rewrite the attestation at ``path`` with another evaluation, signed by ``key`` (a rogue evaluator)."""
    bundle = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["evaluation"] = evaluation
    path.write_bytes(sign_statement(statement, key))


GOOD_EVALUATION = {"suite": "standard", "threat_models": [{"norm": "linf", "eps": [0.1, 0.3]}], "n": 200,
                   "clean_accuracy": 0.98,
                   "robust_accuracy": [{"label": "linf", "eps": 0.1, "accuracy": 0.91},
                                       {"label": "linf", "eps": 0.3, "accuracy": 0.62}],
                   "flags": ["accuracy_rises_with_eps"]}


def _with(**changes):
    evaluation = copy.deepcopy(GOOD_EVALUATION)
    evaluation.update(changes)
    return evaluation


@pytest.mark.parametrize("evaluation, message", [
    (_with(n=10**400), r"positive integer 'n'"),
    (_with(n="200"), r"positive integer 'n'"),
    (_with(clean_accuracy="0.98"), r"'clean_accuracy' holds '0.98'"),
    (_with(robust_accuracy=[{"label": "linf", "eps": 0.3, "accuracy": "0.9"}]), r"accuracy' holds '0.9'"),
    (_with(robust_accuracy=[{"label": "linf", "eps": -1, "accuracy": 0.9}]), r"eps' must be a finite"),
    (_with(robust_accuracy=[]), r"holds no accuracy values"),
    (_with(flags="none"), r"'flags' must be a list"),
    (_with(flags=[{"key": "x"}]), r"'flags\[0\]' must be a non-empty string"),
    (_with(threat_models="linf"), r"'threat_models' must be a list"),
    (_with(extra=1), r"unknown field\(s\) extra"),
    ({k: v for k, v in GOOD_EVALUATION.items() if k != "n"}, r"lacks n"),
    ([1], r"'evaluation' must be a JSON object"),
])
def test_verify_checks_a_signed_evaluation_by_type_and_range(tmp_path, key, evaluation, message):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w")
    result = attest_model(weights, bench_report({0.3: 0.5}), key)
    _resign_with_evaluation(result.attestation, key, evaluation)
    with pytest.raises(VerificationError, match=message):
        verify_attestation(weights, key.public_key(), result.attestation, require="n>=1")


def test_an_attestation_in_the_shape_bastion_always_wrote_still_verifies(tmp_path, key):
    """Attestations made before the schema check: an eps-less entry and free-form labels were allowed."""
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w")
    result = attest_model(weights, bench_report({0.3: 0.5}), key)
    older = _with(robust_accuracy=[{"label": "linf/pgd", "eps": 0.1, "accuracy": 0.91},
                                   {"label": "", "eps": None, "accuracy": 0.62}], suite=None)
    _resign_with_evaluation(result.attestation, key, older)
    ok = verify_attestation(weights, key.public_key(), result.attestation,
                            require="robust_accuracy>=0.6 and robust_accuracy[0.1]>0.9 and n==200 and flags==1")
    assert len(ok.requirements_met) == 4 and ok.evaluation == older


def test_cli_exit_codes_for_bad_reports_and_bad_attestations(tmp_path, runner, key):
    model = make_model_dir(tmp_path)
    write_keypair(tmp_path / "k", key)
    signing = ["--key", str(tmp_path / "k")]
    assert runner.invoke(main, ["sign", str(model), *signing]).exit_code == 0
    report = tmp_path / "report.json"
    report.write_text(json.dumps(edited("summary.n", 10**400)))
    bad = runner.invoke(main, ["attest", str(model), "--report", str(report), *signing])
    assert bad.exit_code == 2 and "positive integer 'summary.n'" in bad.output and len(bad.output.splitlines()) == 1
    report.write_text(json.dumps(bench_report({0.3: 0.5})))
    missing = runner.invoke(main, ["attest", str(tmp_path / "no-model"), "--report", str(report), *signing])
    assert missing.exit_code == 2 and "no such model file or directory" in missing.output
    assert runner.invoke(main, ["attest", str(model), "--report", str(report), *signing]).exit_code == 0
    _resign_with_evaluation(model / "robustness.att.json", key, _with(n=10**400))
    verified = runner.invoke(main, ["verify", str(model), "--key", str(tmp_path / "k.pub"), "--require", "n>=1"])
    assert verified.exit_code == 1 and "positive integer 'n'" in verified.output, verified.output
    assert len(verified.output.splitlines()) == 1 and "internal error" not in verified.output


def test_attest_on_a_missing_model_is_bad_input(tmp_path, key):
    with pytest.raises(UsageError, match="no such model file or directory"):
        attest_model(tmp_path / "missing", bench_report({0.3: 0.5}), key)


@pytest.mark.parametrize("name", ["robustness.att.json", "model.sig"])
def test_a_directory_named_like_bastions_own_files_is_verified_like_any_other(tmp_path, key, name):
    model = make_model_dir(tmp_path)
    outside = tmp_path / "signature.sig"
    sign_model(model, key)
    shutil.move(model / "model.sig", outside)  # its signed ignore list still names model.sig
    verify_model(model, key.public_key(), signature=outside)
    (model / name).mkdir()
    (model / name / "payload.bin").write_bytes(b"unsigned")
    with pytest.raises(VerificationError, match=f"file '{name}/payload.bin' is not signed"):
        verify_model(model, key.public_key(), signature=outside)


def test_a_directory_named_like_the_signature_cannot_hide_files_from_the_cli(tmp_path, runner, key):
    model = make_model_dir(tmp_path)
    write_keypair(tmp_path / "k", key)
    assert runner.invoke(main, ["sign", str(model), "--key", str(tmp_path / "k")]).exit_code == 0
    (model / "robustness.att.json").mkdir()
    (model / "robustness.att.json" / "evil.py").write_text("import os")
    result = runner.invoke(main, ["verify", str(model), "--key", str(tmp_path / "k.pub")])
    assert result.exit_code == 1 and "'robustness.att.json/evil.py' is not signed" in result.output


def test_an_attestation_does_not_ignore_a_directory_named_like_one(tmp_path, key):
    model = make_model_dir(tmp_path)
    outside = tmp_path / "elsewhere.att.json"
    result = attest_model(model, bench_report({0.3: 0.5}), key, out=outside, hash_type="blake3")
    verify_attestation(model, key.public_key(), outside)
    (model / "robustness.att.json").mkdir()
    (model / "robustness.att.json" / "extra.bin").write_bytes(b"x")
    with pytest.raises(VerificationError, match="attests a different model"):
        verify_attestation(model, key.public_key(), result.attestation)
    # A regular file of that name is bastion's own and stays ignored.
    shutil.rmtree(model / "robustness.att.json")
    (model / "robustness.att.json").write_bytes(b"an attestation file")
    verify_attestation(model, key.public_key(), outside)


def test_writing_a_signature_over_a_directory_is_refused(tmp_path, key):
    model = make_model_dir(tmp_path)
    (model / "model.sig").mkdir()
    with pytest.raises(UsageError, match="exists and is not a regular file"):
        sign_model(model, key)


def test_a_real_bench_report_and_attack_output_attest_and_verify(tmp_path, runner, key):
    """The reports bastion writes today, end to end through the CLI."""
    write_keypair(tmp_path / "k", key)
    model = make_model_dir(tmp_path)
    out = tmp_path / "run"
    bench = runner.invoke(main, ["bench", "--model", "mnist-cnn", "--suite", "quick", "--n", "6", "--out", str(out),
                                 "--quiet"])
    assert bench.exit_code == 0, bench.output
    attested = runner.invoke(main, ["attest", str(model), "--report", str(out / "report.json"), "--key",
                                    str(tmp_path / "k"), "--json"])
    assert attested.exit_code == 0, attested.output
    assert json.loads(attested.output)["evaluation"]["n"] == 6
    checked = runner.invoke(main, ["verify", str(model), "--key", str(tmp_path / "k.pub"), "--attestation",
                                   str(model / "robustness.att.json"), "--require", "n==6 and robust_accuracy[0.3]>=0"])
    assert checked.exit_code == 1 and "no such signature file" in checked.output  # attested, not signed yet
    assert runner.invoke(main, ["sign", str(model), "--key", str(tmp_path / "k")]).exit_code == 0
    checked = runner.invoke(main, ["verify", str(model), "--key", str(tmp_path / "k.pub"),
                                   "--require", "n==6 and robust_accuracy[0.3]>=0"])
    assert checked.exit_code == 0, checked.output
    attack = runner.invoke(main, ["attack", "--attack", "fgsm", "--eps", "0.1", "--n", "6", "--json"])
    assert attack.exit_code == 0, attack.output
    (tmp_path / "attack.json").write_text(attack.stdout)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w")
    result = runner.invoke(main, ["attest", str(weights), "--report", str(tmp_path / "attack.json"), "--key",
                                  str(tmp_path / "k")])
    assert result.exit_code == 0 and "on 6 samples" in result.output, result.output
    assert verify_attestation(weights, key.public_key(), tmp_path / "w.bin.att.json").evaluation["suite"] is None
    assert PREDICATE_TYPE.startswith("https://bastion.dev/")
