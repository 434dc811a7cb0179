"""`bastion sanitize`, `detect` and `certify` end to end on a few samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bastion.cli import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_sanitize_data_end_to_end(tmp_path):
    x = np.random.default_rng(0).random((5, 1, 28, 28)).astype(np.float32)
    x[0, 0, 0, 0] = 1.5  # out of range: the bitdepth recipe clamps
    src, out = tmp_path / "x.npz", tmp_path / "clean.npz"
    np.savez(src, x=x, y=np.arange(5))
    code, output = run("sanitize", "--recipe", "sanitize-bitdepth", "--input", src, "--out", out, "--json")
    assert code == 0, output
    summary = json.loads(output)
    assert summary["out_of_range_values_clamped"] == 1 and summary["samples"] == 5
    with np.load(out) as arrays:
        assert set(np.unique(arrays["x"])) <= {0.0, 1.0}
        assert arrays["y"].tolist() == list(range(5))
    code, output = run("sanitize", "--recipe", "sanitize-bitdepth", "--input", src, "--out", out)
    assert code == 0 and "1 out-of-range value(s) clamped" in output


@pytest.mark.parametrize("args, message", [
    (["--recipe", "sanitize-median", "--input", "{x}", "--out", "{out}"], "outside the bounds"),
    (["--recipe", "sanitize-bitdepth", "--input", "{nan}", "--out", "{out}"], "NaN/Inf"),
    (["--recipe", "nope", "--input", "{x}", "--out", "{out}"], "no defenses file named 'nope'"),
    (["--recipe", "{bad}", "--input", "{x}", "--out", "{out}"], "bad.toml: transforms[0].type"),
    (["--recipe", "sanitize-median", "--out", "{out}"], "exactly one of --input"),
    (["--recipe", "sanitize-median", "--input", "{tmp}/missing.npz", "--out", "{out}"], "no such file"),
])
def test_sanitize_errors_are_one_line(tmp_path, args, message):
    x = np.full((2, 1, 28, 28), 2.0, dtype=np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    x[:] = 0.5
    x[0, 0, 3, 3] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    (tmp_path / "bad.toml").write_text('[[transforms]]\ntype = "blur"\n')
    paths = {"x": tmp_path / "x.npz", "nan": tmp_path / "nan.npz", "out": tmp_path / "o.npz",
             "bad": tmp_path / "bad.toml", "tmp": tmp_path}
    code, output = run("sanitize", *[a.format(**paths) for a in args])
    assert code == 2
    assert message in output and output.startswith("error: ") and output.count("\n") == 1


def test_sanitized_model_bundle_is_attacked_adaptively(tmp_path):
    bundle = tmp_path / "sanitized"
    code, output = run("sanitize", "--recipe", "sanitize-jpeg", "--model", "mnist-cnn", "--out", bundle)
    assert code == 0, output
    assert "BPDA for jpeg" in output
    code, output = run("attack", "--attack", "pgd", "--eps", "0.1", "--model", bundle, "--n", "20",
                       "-p", "steps=10", "--json")
    assert code == 0, output
    summary = json.loads(output)
    assert summary["clean_accuracy"] >= 0.9
    assert summary["results"][0]["robust_accuracy"] < summary["clean_accuracy"]  # gradients flow (BPDA)
    code, output = run("sanitize", "--recipe", "sanitize-jpeg", "--model", bundle, "--out", tmp_path / "again")
    assert code == 2 and "already has a sanitizer" in output


def test_detect_end_to_end():
    code, output = run("detect", "--model", "mnist-cnn", "--calib-n", "100", "--n", "20", "--fpr", "0.1",
                       "--attack", "pgd", "--eps", "0.3", "--adaptive-steps", "5", "--json")
    assert code == 0, output
    report = json.loads(output)
    assert report["n_clean"] == 20 and report["target_fpr"] == 0.1 and report["threshold"] > 0
    assert report["attack"] == "pgd" and report["adaptive_undetected_success"] is not None
    code, output = run("detect", "--calib-n", "100", "--n", "20")
    assert code == 0 and "held-out clean samples flagged" in output
    code, output = run("detect", "--fpr", "2", "--calib-n", "100", "--n", "5")
    assert code == 2 and "false-positive rate" in output


def test_certify_end_to_end(tmp_path):
    out = tmp_path / "cert"
    code, output = run("certify", "--sigma", "0.25", "--n", "3", "--n0", "20", "--samples", "100",
                       "--out", out, "--json")
    assert code == 0, output
    summary = json.loads(output)
    assert summary["model"] == "zoo:mnist-cnn-gaussian" and summary["n"] == 3
    assert len(summary["per_sample"]) == 3 and summary["certified_accuracy"][0]["radius"] == 0
    assert json.loads((out / "certify.json").read_text())["sigma"] == 0.25
    assert (out / "certified_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, output = run("certify", "--sigma", "0.25", "--n", "2", "--n0", "10", "--samples", "50")
    assert code == 0 and "certified accuracy" in output and "raise --samples" in output
    code, output = run("certify", "--sigma", "0", "--n", "2")
    assert code == 2 and output.startswith("error: ") and "sigma" in output


def test_sanitize_model_honours_device_and_detect_squeezer_errors_are_one_line(tmp_path):
    code, output = run("sanitize", "--recipe", "sanitize-bitdepth", "--model", "mnist-cnn", "--out",
                       tmp_path / "b", "--device", "cpu", "--json")
    assert code == 0, output
    assert json.loads(output)["adaptive_evaluation"] == ["BPDA for bit-depth"]
    code, output = run("sanitize", "--recipe", "sanitize-bitdepth", "--model", "mnist-cnn", "--out",
                       tmp_path / "c", "--device", "nonsense")
    assert code == 2 and output.startswith("error: --device") and output.count("\n") == 1
    code, output = run("detect", "--bits", "0", "--calib-n", "100", "--n", "5")
    assert code == 2 and output == "error: bit-depth: bits must be an integer from 1 to 16, got 0\n"
    code, output = run("detect", "--calib-n", "100", "--n", "5", "--attack", "pgd", "--eps", "0.1",
                       "--adaptive-steps", str(10 ** 18))
    assert code == 2 and "adaptive attack: steps must be an integer from 1 to 10,000" in output
    code, output = run("certify", "--sigma", "0.25", "--n", "2", "--samples", str(10 ** 12))
    assert code == 2 and "--samples must be from 1 to 1,000,000" in output
