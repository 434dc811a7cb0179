"""`bastion bench` end to end: files written, --json parses, clear errors, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from pathlib import Path

import numpy as np
import torch
from bench_helpers import write_suite
from click.testing import CliRunner
from safetensors.torch import save_file

from bastion.cli import main
from tests.fixtures_pkg.tiny import tiny_mlp

PNGS = ("robust_accuracy_vs_eps.png", "per_class.png", "loss_traces.png")


def bench(*args):
    return CliRunner().invoke(main, ["bench", "--model", "mnist-cnn", *args])


def test_bench_writes_reports_and_plots(tmp_path):
    out = tmp_path / "run"
    result = bench("--suite", "quick", "--n", "12", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "clean accuracy" in result.stdout and "robust accuracy eps 0.3" in result.stdout
    assert "attack-failure indicators" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["schema"].startswith("bastion.bench.report/")
    assert report["summary"]["n"] == 12 and report["seed"] == 0
    assert report["suite"]["attacks"][1]["params"]["steps"] == 40
    assert {"torch", "numpy", "bastion"} <= set(report["versions"])
    assert len(report["indicators"]) == 8
    markdown = (out / "report.md").read_text()
    assert "# Robustness report" in markdown and "Attack-failure indicators" in markdown
    for name in PNGS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_json_summary_parses_and_eps_override_makes_a_curve(tmp_path):
    result = bench("--suite", "quick", "--n", "10", "--eps", "0.05,0.1", "--out", str(tmp_path / "o"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [r["eps"] for r in summary["results"]] == [0.05, 0.1]
    assert summary["n"] == 10 and 0 <= summary["robust_accuracy"] <= summary["clean_accuracy"]
    assert {i["key"] for i in summary["indicators"]} >= {"gradients", "accuracy-rises-with-eps"}


def test_quiet_prints_nothing(tmp_path):
    result = bench("--suite", "quick", "--n", "5", "--out", str(tmp_path / "q"), "--quiet")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""
    assert (tmp_path / "q" / "report.json").is_file()


def test_default_sample_count_is_announced(tmp_path, monkeypatch):
    import bastion.cli.bench_cmds as bench_cmds

    monkeypatch.setattr(bench_cmds, "DEFAULT_N", 6)
    result = bench("--suite", "quick", "--out", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    assert "first 6 of 1000" in result.stderr and "--n" in result.stderr


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('eps = 0.3\n[[attack]]\nname = "nope"\n')
    for args in (["--suite", str(bad)], ["--suite", "no-such"], ["--n", "0"], ["--eps", "x", "--suite", "quick"],
                 ["--suite", "quick", "--data", str(tmp_path / "none.npz")]):
        result = bench(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path):
    body = ('\n[[attack]]\nname = "fgsm"\n\n[[attack]]\nname = "pgd"\nsteps = 300\n'
            '\n[[attack]]\nname = "pgd"\nsteps = 10\n')
    suite = write_suite(tmp_path / "s.toml", body, eps="[0.01, 0.02]")
    model = tiny_mlp()
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    x = torch.rand(30, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=model(x).argmax(1).numpy())
    common = ["--model", "tests.fixtures_pkg.tiny:tiny_mlp", "--weights", str(tmp_path / "w.safetensors"),
              "--data", str(tmp_path / "d.npz"), "--suite", suite, "--quiet"]
    command = [sys.executable, "-c", "from bastion.cli import main; main()", "bench", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    repo = Path(__file__).resolve().parents[1]  # so the factory module imports
    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, "--out", str(killed)], env=env, cwd=repo)
    checkpoint = killed / "checkpoint.json"
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        if checkpoint.is_file() and json.loads(checkpoint.read_text())["units"]:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(json.loads(checkpoint.read_text())["units"])
    assert 1 <= done < 6, "the run should have been killed part-way"
    assert not (killed / "report.json").exists()

    resumed = subprocess.run([*command, "--out", str(killed), "--resume"], env=env, cwd=repo,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    straight = subprocess.run([*command, "--out", str(tmp_path / "straight")], env=env, cwd=repo,
                              capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr

    def load(folder):
        report = json.loads((folder / "report.json").read_text())
        for key in ("created", "timing", "command"):
            report.pop(key)
        for result in report["results"]:
            for attack in result["attacks"]:
                attack.pop("seconds")
        return report

    assert load(killed) == load(tmp_path / "straight")
