"""`bastion bench --require` as a CI gate (exit 0 met, 1 unmet, 2 malformed) and its JUnit XML."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from bench_helpers import write_suite
from click.testing import CliRunner
from report_helpers import check_junit_schema
from safetensors.torch import save_file

from bastion.cli import main
from tests.fixtures_pkg.tiny import tiny_mlp


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    torch.manual_seed(0)
    model = tiny_mlp()
    save_file(model.state_dict(), root / "w.safetensors")
    x = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    np.savez(root / "d.npz", x=x.numpy(), y=model(x).argmax(1).numpy())
    suite = write_suite(root / "s.toml", '\n[[attack]]\nname = "fgsm"\n', eps="0.05")
    common = ["--model", "tests.fixtures_pkg.tiny:tiny_mlp", "--weights", str(root / "w.safetensors"),
              "--data", str(root / "d.npz"), "--suite", suite, "--out", str(root / "run")]
    first = CliRunner().invoke(main, ["bench", *common, "--json"])
    assert first.exit_code == 0, first.output
    return root, common, json.loads(first.stdout)


def bench(setup, *args):
    """Rerun the gate on the finished run (--resume: nothing is attacked again)."""
    _, common, _ = setup
    return CliRunner().invoke(main, ["bench", *common, "--resume", *args])


def test_met_requirement_exits_0_and_junit_lists_every_clause_and_indicator(setup):
    root, _, summary = setup
    robust = summary["robust_accuracy"]
    junit = root / "met.xml"
    result = bench(setup, "--require", f"robust_accuracy[0.05] >= {robust} and n >= 20 and clean_accuracy > 0",
                   "--junit", str(junit))
    assert result.exit_code == 0, result.output
    assert f"requirement robust_accuracy[0.05]>={robust:g}: met" in result.stdout
    tree = ET.parse(junit).getroot()
    check_junit_schema(tree)
    [suite] = tree.findall("testsuite")
    cases = suite.findall("testcase")
    indicators = [c for c in cases if c.get("classname") == "bastion.bench.indicators"]
    clauses = [c for c in cases if c.get("classname") == "bastion.bench.requirements"]
    assert len(clauses) == 3 and len(indicators) == 8
    assert int(suite.get("tests")) == len(cases) == 11
    fired = sum(1 for i in summary["indicators"] if i["status"] == "fired")
    skipped = sum(1 for i in summary["indicators"] if i["status"] == "skipped")
    assert int(suite.get("failures")) == fired and int(suite.get("skipped")) == skipped
    assert suite.get("errors") == "0" and not [c for c in clauses if c.find("failure") is not None]
    properties = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert properties["robust_accuracy[0.05]"] == str(robust) and properties["n"] == "20"
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_unmet_requirement_exits_1_naming_the_clause_and_the_value_and_keeps_the_report(setup):
    root, _, summary = setup
    (root / "run" / "report.json").unlink()
    junit = root / "unmet.xml"
    clean = summary["clean_accuracy"]
    result = bench(setup, "--require", "robust_accuracy >= 1.01 and flags == 0 and clean_accuracy >= 0",
                   "--junit", str(junit))
    assert result.exit_code == 1, result.output
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # one line, after progress
    assert error.startswith(f"error: requirement not met: robust_accuracy>=1.01 (measured {summary['robust_accuracy']:g})")
    assert error == result.stderr.splitlines()[-1]
    assert "requirement robust_accuracy>=1.01: NOT MET" in result.stdout
    assert (root / "run" / "report.json").is_file()  # the report is written whether or not the gate passes
    suite = ET.parse(junit).getroot().find("testsuite")
    [failed] = [c for c in suite.findall("testcase") if c.get("name") == "requirement robust_accuracy>=1.01"]
    failure = failed.find("failure")
    assert failure.get("type") == "requirement-not-met"
    assert failure.get("message").startswith(f"robust_accuracy>=1.01 not met: {summary['robust_accuracy']:g}")
    assert "95% CI" in failure.get("message")
    [met] = [c for c in suite.findall("testcase") if c.get("name") == "requirement clean_accuracy>=0"]
    assert met.find("failure") is None and f"{clean:g}" in met.find("system-out").text


def test_json_summary_carries_the_verdicts(setup):
    result = bench(setup, "--require", "n >= 21", "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["requirements_met"] is False
    assert summary["requirements"] == [{"clause": "n>=21", "met": False, "measured": 20.0, "detail": "20"}]
    assert summary["robust_accuracy_ci"]["n"] == 20 and "gap_ci" in summary["results"][0]["class_gap"]["robust"]


@pytest.mark.parametrize("requirement, message", [
    ("robust_accuracy >= 0.8 or flags == 0", r"--require: cannot parse"),
    ("robust_accuracy[0.3] >= 0.8", r"--require: robust_accuracy\[0.3\]>=0.8 asks for eps 0.3, which this run does "
                                    r"not measure \(eps 0.05\)"),
    ("accuracy >= 0.8", r"unknown field 'accuracy'"),
])
def test_malformed_requirement_exits_2_before_anything_runs(setup, tmp_path, requirement, message):
    _, common, _ = setup
    out = tmp_path / "never"
    args = [a if a != common[common.index("--out") + 1] else str(out) for a in common]
    result = CliRunner().invoke(main, ["bench", *args, "--require", requirement, "--junit", str(tmp_path / "j.xml")])
    assert result.exit_code == 2, result.output
    assert re.search(message, result.stderr) and result.stderr.count("\n") == 1, result.stderr
    assert not out.exists() and not (tmp_path / "j.xml").exists()


def test_compare_options_are_refused_without_compare(setup):
    result = bench(setup, "--require-no-regression")
    assert result.exit_code == 2 and "--require-no-regression applies with --compare" in result.stderr
