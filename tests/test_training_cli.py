"""`bastion train` end to end: a loadable bundle, clear errors, and resume after kill -9."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tomli_w
from click.testing import CliRunner
from safetensors.torch import load_file

from bastion.cli import main
from bastion.data import load_data
from bastion.models import load_model
from training_helpers import digits_raw, kill_9_after_checkpoint


@pytest.fixture()
def digits_npz(tmp_path):
    data = load_data("digits", "train").take(300)
    path = tmp_path / "digits300.npz"
    np.savez(path, x=data.x.numpy(), y=data.y.numpy())
    return path


def write_recipe(path, method="pgd-at", epochs=2):
    raw = digits_raw(method, optimizer={"epochs": epochs}, data={"holdout": 50})
    path.write_text(tomli_w.dumps(raw))
    return path


def test_train_writes_a_bundle_that_attack_loads(tmp_path, digits_npz):
    recipe = write_recipe(tmp_path / "r.toml")
    out = tmp_path / "model"
    result = CliRunner().invoke(main, ["train", "--recipe", str(recipe), "--data", str(digits_npz),
                                       "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["bundle"] == str(out) and summary["metrics"]["epochs_run"] == 2
    assert not (tmp_path / "model.ckpt").exists()  # the checkpoint is removed once the bundle is written

    loaded = load_model(str(out))
    assert loaded.name == "model" and loaded.input_shape == (1, 8, 8) and loaded.num_classes == 10
    training = loaded.meta.training
    assert training["method"] == "pgd-at" and training["seed"] == 0
    assert (training["train_samples"], training["holdout_samples"]) == (250, 50)  # 300 images, 50 held out
    assert training["settings"]["attack"]["steps"] == 3
    assert 0 <= training["metrics"]["holdout_robust"] <= 1

    attacked = CliRunner().invoke(main, ["attack", "--attack", "pgd", "--eps", "0.2", "--model", str(out),
                                         "--data", "digits", "--n", "50", "--json"])
    assert attacked.exit_code == 0, attacked.output
    assert json.loads(attacked.output)["n"] == 50


def test_train_human_output_and_shipped_recipe_name(tmp_path):
    out = tmp_path / "fast"
    result = CliRunner().invoke(main, ["train", "--recipe", "fgsm-rs", "--model", "digits-cnn", "--data",
                                       "digits", "--out", str(out), "--epochs", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "trained digits-cnn with fgsm-rs" in result.output
    assert "held-out check" in result.output and "apgd-ce-20 robust" in result.output
    assert f"bastion bench --model {out} --eps 0.3" in result.output


def test_train_gaussian_recipe_from_the_cli_then_certify(tmp_path):
    out = tmp_path / "noisy"
    result = CliRunner().invoke(main, ["train", "--recipe", "gaussian-0.25", "--model", "digits-cnn", "--data",
                                       "digits", "--out", str(out), "--epochs", "5", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "trained digits-cnn with gaussian-0.25 (gaussian)" in result.output
    assert "under noise sigma 0.25" in result.output
    assert f"bastion certify --model {out} --sigma 0.25" in result.output
    training = load_model(str(out)).meta.training
    assert training["method"] == "gaussian" and training["settings"]["noise"]["sigma"] == 0.25
    assert 0.5 < training["metrics"]["holdout_noisy"] <= 1

    certified = CliRunner().invoke(main, ["certify", "--model", str(out), "--data", "digits", "--sigma", "0.25",
                                          "--n", "10", "--samples", "200", "--json"])
    assert certified.exit_code == 0, certified.output
    assert json.loads(certified.output)["n"] == 10


@pytest.mark.parametrize("args,expected", [
    (["--recipe", "no-such-recipe"], "no defenses file named"),
    (["--recipe", "BAD"], "unknown key 'optimizer.speed'"),
    (["--recipe", "BADAWP"], "key 'awp.gamma' must be in [0, 1) (0 = off), got -0.1"),
    (["--recipe", "GOOD", "--epochs", "0"], "--epochs must be >= 1"),
    (["--recipe", "GOOD", "--model", "nonexistent-model"], "unknown model"),
    (["--recipe", "GOOD", "--data", "missing.npz"], "no such file"),
])
def test_bad_input_is_one_line_error(tmp_path, args, expected):
    bad = tmp_path / "bad.toml"
    bad.write_text("[recipe]\nmethod = 'clean'\n[optimizer]\nspeed = 3\n")
    bad_awp = tmp_path / "bad-awp.toml"
    bad_awp.write_text("[recipe]\nmethod = 'trades'\n[awp]\ngamma = -0.1\n")
    good = write_recipe(tmp_path / "good.toml")
    named = {"BAD": str(bad), "BADAWP": str(bad_awp), "GOOD": str(good)}
    args = [named.get(a, a) for a in args]
    result = CliRunner().invoke(main, ["train", *args, "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output


def test_resume_after_kill_9_matches_an_uninterrupted_run(tmp_path, digits_npz):
    recipe = write_recipe(tmp_path / "r.toml", method="fgsm-rs", epochs=12)
    common = ["train", "--recipe", str(recipe), "--data", str(digits_npz), "--quiet"]

    whole = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output

    out = tmp_path / "killed"
    checkpoint = tmp_path / "killed.ckpt" / "last.pt"
    kill_9_after_checkpoint(["-c", "from bastion.cli import main; main()", *common, "--out", str(out)], checkpoint)
    assert checkpoint.exists() and not (out / "model.safetensors").exists()

    resumed = CliRunner().invoke(main, [*common, "--out", str(out), "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.output)
    assert 1 <= summary["resumed_from_epoch"] < 12 and summary["metrics"]["epochs_run"] == 12
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
