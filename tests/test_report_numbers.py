"""The report's numbers: every accuracy with its count and 95% interval, floats to their precision, plots with
error bars, and no line through a single eps."""

from __future__ import annotations

import json

import matplotlib
import pytest
from bench_helpers import linear_model, loaded, self_labelled, use_test_attacks, write_suite
from report_helpers import hand_made_report

from bastion.evaluation import benchmark, load_suite
from bastion.evaluation.intervals import clopper_pearson
from bastion.evaluation.plots import PLOTS, figure

matplotlib.use("Agg")

FGSM_PGD = '\n[[attack]]\nname = "fgsm"\n\n[[attack]]\nname = "pgd"\nsteps = 10\n'


@pytest.fixture(autouse=True)
def _test_attacks(monkeypatch):
    use_test_attacks(monkeypatch)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A real benchmark of a tiny model over two eps, written to disk."""
    root = tmp_path_factory.mktemp("numbers")
    model = linear_model()
    suite = load_suite(write_suite(root / "s.toml", FGSM_PGD, eps="[0.05, 0.15]"))
    report = benchmark(loaded(model), self_labelled(model, n=30), suite, out_dir=root / "run", seed=1)
    return report, json.loads((root / "run" / "report.json").read_text()), root / "run"


def _floats(value, path=""):
    if isinstance(value, float):
        yield path, value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield from _floats(inner, f"{path}.{key}")
    elif isinstance(value, list):
        for inner in value:
            yield from _floats(inner, f"{path}[]")


def _accuracies(value, path=""):
    """(path, entry, key) of every accuracy in the report: keys ending in accuracy or accuracy_raw."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if (key.endswith("_accuracy") or key.endswith("_accuracy_raw")) and isinstance(inner, (int, float)):
                yield f"{path}.{key}", value, key
            yield from _accuracies(inner, f"{path}.{key}")
    elif isinstance(value, list):
        for inner in value:
            yield from _accuracies(inner, f"{path}[]")


def test_no_float_in_report_json_has_more_digits_than_it_carries(written):
    _, on_disk, _ = written
    floats = list(_floats(on_disk))
    assert len(floats) > 50
    for path, value in floats:
        # Every float is either a fraction (6 decimals) or a measurement (6 significant digits).
        assert value == round(value, 6) or value == float(f"{value:.6g}"), (path, value)
        if path.endswith("seconds"):
            assert value == round(value, 2), (path, value)
        if ".loss_trace" in path or ".details" in path:
            assert value == float(f"{value:.6g}"), (path, value)
    text = json.dumps(on_disk)
    assert "00000000" not in text and "99999999" not in text  # the telltale of float32 noise in JSON


def test_every_accuracy_carries_its_count_and_its_interval(written):
    _, on_disk, _ = written
    found = list(_accuracies(on_disk))
    # clean + robust in the summary; robust and raw per eps; clean and robust per class per eps
    classes = sum(len(r["per_class"]) for r in on_disk["results"])
    assert len(found) == 2 + 2 * len(on_disk["results"]) + 2 * classes and classes >= 4
    for path, entry, key in found:
        ci = entry[f"{key}_ci"]
        exact = clopper_pearson(ci["k"], ci["n"])
        assert entry[key] == round(ci["k"] / ci["n"], 6), path
        assert ci["low"] <= exact[0] <= entry[key] <= exact[1] <= ci["high"], path
        assert ci["high"] - exact[1] <= 1e-6 and exact[0] - ci["low"] <= 1e-6, path
    summary = on_disk["summary"]
    assert summary["clean_accuracy_ci"]["n"] == 30
    assert summary["robust_accuracy_ci"] == on_disk["results"][-1]["robust_accuracy_ci"]
    assert on_disk["intervals"]["level"] == 0.95 and "Clopper-Pearson" in on_disk["intervals"]["proportion"]
    for result in on_disk["results"]:
        for which in ("clean", "robust"):
            gap = result["class_gap"][which]
            assert -1.0 <= gap["gap_ci"]["low"] <= gap["gap"] <= gap["gap_ci"]["high"] <= 1.0


def test_markdown_shows_counts_and_intervals(written):
    report, _, out = written
    markdown = (out / "report.md").read_text()
    clean = report["summary"]["clean_accuracy_ci"]
    assert f"| {clean['k']}/{clean['n']} | [{100 * clean['low']:.2f}, {100 * clean['high']:.2f}]% |" in markdown
    assert "Per class at eps 0.15 (95% Clopper-Pearson intervals)" in markdown
    assert "picked after the fact" in markdown


def _drawn_lines(fig):
    """Line2D objects of the figure's first axes that draw a line (not just markers or caps)."""
    ax = fig.axes[0]
    return [line for line in ax.get_lines() if line.get_linestyle() not in ("None", "none", "", " ")]


def test_single_eps_plot_shows_points_with_intervals_and_no_line():
    report = hand_made_report({0.3: set(range(12))}, n=20)
    fig = figure("accuracy_vs_eps", report)
    try:
        assert _drawn_lines(fig) == []
        ax = fig.axes[0]
        error_bars = [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
        assert len(error_bars) == 2  # clean, and robust at the one eps
        robust_bar = error_bars[1].lines[2][0].get_segments()[0]  # the vertical bar at eps 0.3
        ci = report["results"][0]["robust_accuracy_ci"]
        assert robust_bar[:, 1] == pytest.approx([100 * ci["low"], 100 * ci["high"]])
    finally:
        matplotlib.pyplot.close(fig)


def test_sweep_plot_draws_a_curve_and_per_class_bars_have_error_bars():
    report = hand_made_report({0.1: set(range(15)), 0.2: set(range(9)), 0.3: set(range(4))}, n=20)
    fig = figure("accuracy_vs_eps", report)
    try:
        assert _drawn_lines(fig)
    finally:
        matplotlib.pyplot.close(fig)
    fig = figure("per_class", report)
    try:
        bars = [c for c in fig.axes[0].containers if isinstance(c, matplotlib.container.BarContainer)]
        assert len(bars) == 2 and all(b.errorbar is not None for b in bars)
    finally:
        matplotlib.pyplot.close(fig)


def test_plots_are_written(written):
    _, _, out = written
    for name in PLOTS.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
