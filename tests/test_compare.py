"""`bastion bench --compare RUN_A RUN_B`: per-eps, per-class and per-sample differences, and the regression gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner
from report_helpers import as_earlier_report, check_junit_schema, hand_made_report, write_run
from scipy.stats import beta

from bastion.cli import main
from bastion.errors import UsageError
from bastion.evaluation.compare import compare_runs
from bastion.evaluation.intervals import Proportion, independent_difference, paired_difference
from bastion.evaluation.report_reader import read_run

RECORDED = Path(__file__).parent / "data" / "mnist-cnn-robust-quick-20.report.json"
SRC = Path(__file__).resolve().parents[1] / "src"
ROBUST_A = {0.1: set(range(16)), 0.3: set(range(12))}


def compare(*args):
    return CliRunner().invoke(main, ["bench", "--compare", *map(str, args)])


@pytest.fixture
def runs(tmp_path):
    """A baseline and three candidates on the same 20 samples: one worse, one that swapped samples, one better."""
    a = write_run(tmp_path / "a", hand_made_report(ROBUST_A, model="baseline"))
    worse = write_run(tmp_path / "worse", hand_made_report({0.1: set(range(16)), 0.3: set(range(12)) - {3}},
                                                           model="candidate"))
    swapped = write_run(tmp_path / "swapped", hand_made_report({0.1: set(range(16)),
                                                                0.3: (set(range(12)) - {3}) | {14}}))
    better = write_run(tmp_path / "better", hand_made_report({0.1: set(range(18)), 0.3: set(range(13))}))
    return a, worse, swapped, better


def test_a_sample_broken_in_b_is_a_regression(runs):
    a, worse, _, _ = runs
    result = compare(a, worse, "--require-no-regression")
    assert result.exit_code == 1, result.output
    assert "broken in B, right in A (1): 3" in result.stdout and "right in B, broken in A (0): none" in result.stdout
    assert "robust accuracy at eps 0.3  60.00% 12/20" in result.stdout and "55.00% 11/20" in result.stdout
    assert result.stderr.strip() == ("error: B regressed against A: robust accuracy at eps 0.3 fell from 60.00% to "
                                     "55.00% (1 sample(s) broken in B that A got right, 0 the reverse)")
    without_gate = compare(a, worse)
    assert without_gate.exit_code == 0 and "REGRESSION" in without_gate.stdout


def test_json_gives_every_difference_with_its_interval(runs):
    a, worse, _, _ = runs
    result = compare(a, worse, "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["same_data"] and report["same_suite"] and report["intervals"] == "paired"
    clean, at_small, at_large = report["changes"]
    assert clean["what"] == "clean accuracy" and clean["eps"] is None and not clean["regressed"]
    assert at_small["eps"] == 0.1 and at_small["difference"] == 0.0 and not at_small["regressed"]
    assert at_large["a"] == {"value": 0.6, "k": 12, "n": 20, "low": pytest.approx(beta.ppf(0.025, 12, 9), abs=1e-6),
                             "high": pytest.approx(beta.ppf(0.975, 13, 8), abs=1e-6)}
    assert at_large["b"]["k"] == 11 and at_large["difference"] == -0.05 and at_large["regressed"]
    assert at_large["broken_in_b"] == [3] and at_large["fixed_in_b"] == []
    # paired: 11 robust in both, 1 in A only, 8 in neither
    low, high = paired_difference(11, 0, 1, 8)
    assert at_large["difference_ci"]["low"] <= low < -0.05 < high <= at_large["difference_ci"]["high"]
    assert report["regressed"] and len(report["regressions"]) == 1
    per_class = {entry["eps"]: entry["classes"] for entry in report["per_class"]}
    assert sorted(per_class) == [0.1, 0.3]
    class_3 = [c for c in per_class[0.3] if c["class"] == 3][0]  # sample 3 has label 3 % 4 = 3
    assert class_3["a"]["k"] == 3 and class_3["b"]["k"] == 2 and class_3["a"]["n"] == 5
    low, high = independent_difference(Proportion(2, 5), Proportion(3, 5))
    assert class_3["difference_ci"]["low"] <= low and high <= class_3["difference_ci"]["high"]


def test_samples_that_change_places_are_listed_but_are_no_regression(runs):
    a, _, swapped, better = runs
    result = compare(a, swapped, "--require-no-regression")
    assert result.exit_code == 0, result.output
    assert "broken in B, right in A (1): 3" in result.stdout and "right in B, broken in A (1): 14" in result.stdout
    assert "no regression" in result.stdout
    assert compare(a, better, "--require-no-regression").exit_code == 0
    assert compare(better, a, "--require-no-regression").exit_code == 1


def test_tolerance(runs):
    a, worse, _, _ = runs
    assert compare(a, worse, "--require-no-regression", "--tolerance", "5%").exit_code == 0  # a drop of exactly 5%
    assert compare(a, worse, "--require-no-regression", "--tolerance", "0.049").exit_code == 1
    bad = compare(a, worse, "--tolerance", "lots")
    assert bad.exit_code == 2 and "--tolerance 'lots'" in bad.stderr


def test_different_data_is_refused_unless_allowed(tmp_path, runs):
    a, _, _, _ = runs
    other = write_run(tmp_path / "other", hand_made_report({0.3: set(range(5))}, n=30, data_sha256="e" * 64))
    refused = compare(a, other)
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert "measured on different data" in refused.stderr and "--allow-different-data" in refused.stderr
    allowed = compare(a, other, "--allow-different-data", "--json", "--require-no-regression")
    assert allowed.exit_code == 1
    report = json.loads(allowed.stdout)
    assert not report["same_data"] and report["intervals"] == "independent"
    assert [c["eps"] for c in report["changes"]] == [None, 0.3] and report["only_in_a"] == [0.1]
    assert report["changes"][1]["broken_in_b"] == []  # indices of different data name different samples
    b = report["changes"][1]["b"]
    assert (b["value"], b["k"], b["n"]) == (round(5 / 30, 6), 5, 30) and report["changes"][1]["regressed"]
    low, high = independent_difference(Proportion(5, 30), Proportion(12, 20))
    assert report["changes"][1]["difference_ci"] == {"low": pytest.approx(low, abs=1e-6),
                                                     "high": pytest.approx(high, abs=1e-6)}


def test_different_attacks_are_refused_unless_allowed_and_other_norms_never_compare(tmp_path, runs):
    a, _, _, _ = runs
    stronger = ({"label": "pgd", "name": "pgd", "family": "white-box", "params": {"steps": 100}},)
    other = write_run(tmp_path / "other", hand_made_report(ROBUST_A, attacks=stronger))
    refused = compare(a, other)
    assert refused.exit_code == 2 and "ran different attacks" in refused.stderr
    assert compare(a, other, "--allow-different-suite").exit_code == 0
    l2 = write_run(tmp_path / "l2", hand_made_report(ROBUST_A, norm="l2"))
    result = compare(a, l2, "--allow-different-suite", "--allow-different-data")
    assert result.exit_code == 2 and "the l2 norm" in result.stderr


def test_earlier_reports_without_intervals_compare_by_their_indices(tmp_path, runs):
    a, worse, _, _ = runs
    earlier = write_run(tmp_path / "earlier", as_earlier_report(json.loads((a / "report.json").read_text())))
    assert "_ci" not in (earlier / "report.json").read_text()
    comparison = compare_runs(earlier, worse)
    assert [(c.eps, c.a.k, c.b.k) for c in comparison.changes] == [(None, 20, 20), (0.1, 16, 16), (0.3, 12, 11)]
    assert comparison.per_class[0.3][3].a == Proportion(3, 5)
    # The recorded report of the serving tests, written before intervals existed, compares with itself.
    recorded = compare_runs(RECORDED, RECORDED)
    assert [(c.a.k, c.a.n) for c in recorded.changes] == [(20, 20), (17, 20)] and not recorded.regressions


@pytest.mark.parametrize("content, message", [
    (None, "no such report"),
    ("{not json", "not a readable JSON report"),
    (json.dumps({"schema": "bastion.bench.report/9"}), "not a `bastion bench` report"),
    (json.dumps([1, 2]), "must be a JSON object"),
    ("[" * 100_000 + "]" * 100_000, "not a readable JSON report"),
])
def test_unreadable_reports_are_one_line_errors(tmp_path, runs, content, message):
    a, _, _, _ = runs
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    result = compare(a, path)
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["results"][1].update(robust_indices=[0, 0]), "lists a sample twice"),
    (lambda r: r["results"][1].update(robust_indices=[25]), "sample indices from 0 to 19"),
    (lambda r: r["summary"].update(n=True), "'summary.n' must be a positive integer"),
    (lambda r: r["results"][0]["per_class"][0].pop("robust_accuracy_ci") and
     r["results"][0]["per_class"][0].update(robust_accuracy=0.123), "no count of 5 samples"),
])
def test_malformed_fields_are_named(tmp_path, edit, message):
    report = hand_made_report(ROBUST_A)
    edit(report)
    with pytest.raises(UsageError, match=message):
        read_run(write_run(tmp_path / "x", report))


def test_compare_refuses_the_options_of_a_run(runs):
    a, worse, _, _ = runs
    result = compare(a, worse, "--model", "mnist-cnn", "--n", "5")
    assert result.exit_code == 2 and "drop --model, --n" in result.stderr


def test_junit_has_one_case_per_compared_accuracy(tmp_path, runs):
    a, worse, _, _ = runs
    junit = tmp_path / "compare.xml"
    result = compare(a, worse, "--junit", junit, "--require-no-regression")
    assert result.exit_code == 1
    root = ET.parse(junit).getroot()
    check_junit_schema(root)
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("3", "1")
    [failed] = [c for c in suite.findall("testcase") if c.find("failure") is not None]
    assert failed.get("name") == "no regression in robust accuracy at eps 0.3"
    assert "broken in B: 3" in failed.find("failure").text


def test_compare_imports_no_torch(runs):
    a, worse, _, _ = runs
    probe = ("import sys; from bastion.cli import main\n"
             "try:\n    main(sys.argv[1:], prog_name='bastion')\nexcept SystemExit as e:\n    code = e.code\n"
             "sys.stderr.write('TORCH=%s\\n' % ('torch' in sys.modules)); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe, "bench", "--compare", str(a), str(worse), "--json"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stderr
    assert "TORCH=False" in done.stderr and json.loads(done.stdout)["regressed"]
