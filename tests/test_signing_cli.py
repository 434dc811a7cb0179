"""End to end as a new user: keygen, sign the bundled model, verify, flip a byte, verify again; attest; scan."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from bastion.cli import main
from bastion.models.zoo import zoo_path
from tests.signing_helpers import bench_report


@pytest.fixture
def runner(monkeypatch):
    monkeypatch.delenv("BASTION_KEY_PASSPHRASE", raising=False)
    return CliRunner()


@pytest.fixture
def workspace(tmp_path, runner):
    model = tmp_path / "mnist-cnn"
    shutil.copytree(zoo_path("mnist-cnn"), model)
    assert runner.invoke(main, ["keygen", "--out", str(tmp_path / "release.key")]).exit_code == 0
    return tmp_path, model


def test_keygen_sign_verify_flip_verify(runner, workspace):
    tmp, model = workspace
    key, pub = str(tmp / "release.key"), str(tmp / "release.key.pub")
    signed = runner.invoke(main, ["sign", str(model), "--key", key])
    assert signed.exit_code == 0, signed.output
    assert "signed" in signed.output and (model / "model.sig").is_file()

    ok = runner.invoke(main, ["verify", str(model), "--key", pub])
    assert ok.exit_code == 0 and ok.output.startswith(f"OK: {model} matches {model / 'model.sig'} (2 files")

    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x10
    weights.write_bytes(bytes(data))
    bad = runner.invoke(main, ["verify", str(model), "--key", pub])
    assert bad.exit_code == 1
    assert bad.output.strip() == (f"error: {model}: does not match {model / 'model.sig'}: file 'model.safetensors' "
                                  "changed (digest differs from the signed one)")
    assert "Traceback" not in bad.output


def test_verify_with_attestation_and_requirement(runner, workspace):
    tmp, model = workspace
    key, pub = str(tmp / "release.key"), str(tmp / "release.key.pub")
    report = tmp / "report.json"
    report.write_text(json.dumps(bench_report({0.1: 0.9, 0.3: 0.4}, n=100, clean=0.98, suite="standard")))
    assert runner.invoke(main, ["sign", str(model), "--key", key]).exit_code == 0
    attested = runner.invoke(main, ["attest", str(model), "--report", str(report), "--key", key])
    assert attested.exit_code == 0, attested.output
    assert "worst robust 40.00% on 100 samples" in attested.output

    good = runner.invoke(main, ["verify", str(model), "--key", pub, "--require", "robust_accuracy[0.1]>=0.8"])
    assert good.exit_code == 0, good.output
    assert "requirement met: robust_accuracy[0.1]>=0.8 (attested 0.9)" in good.output

    weak = runner.invoke(main, ["verify", str(model), "--key", pub, "--require", "robust_accuracy>=0.8"])
    assert weak.exit_code == 1 and "requirement robust_accuracy>=0.8 not met (attested value 0.4)" in weak.output

    as_json = runner.invoke(main, ["verify", str(model), "--key", pub, "--json",
                                   "--attestation", str(model / "robustness.att.json")])
    assert as_json.exit_code == 0 and json.loads(as_json.output)["attestation"]["evaluation"]["n"] == 100

    typo = runner.invoke(main, ["verify", str(model), "--key", pub, "--require", "robust>=0.8"])
    assert typo.exit_code == 2 and "unknown field 'robust'" in typo.output


@pytest.mark.parametrize("args, code, message", [
    (["verify", "{tmp}/nope", "--key", "{tmp}/release.key.pub"], 2, "no such model file or directory"),
    (["verify", "{model}", "--key", "{tmp}/missing.pub"], 2, "no such key file"),
    (["verify", "{model}", "--key", "{tmp}/release.key.pub"], 1, "no such signature file"),
    (["sign", "{model}", "--key", "{tmp}/release.key.pub"], 2, "cannot read private key"),
    (["attest", "{model}", "--report", "{tmp}/none.json", "--key", "{tmp}/release.key"], 2, "no such report file"),
])
def test_bad_inputs_give_one_line_errors(runner, workspace, args, code, message):
    tmp, model = workspace
    result = runner.invoke(main, [a.format(tmp=tmp, model=model) for a in args])
    assert result.exit_code == code, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_scan_the_bundled_model_directory(runner, workspace):
    _, model = workspace
    result = runner.invoke(main, ["scan", str(model)])
    assert result.exit_code == 0 and "no pickle-based files found" in result.output
