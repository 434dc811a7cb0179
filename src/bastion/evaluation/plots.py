"""PNG plots of a benchmark report: robust accuracy vs eps, per-class bars, white-box loss traces.

Accuracies are drawn with their 95% intervals as error bars. With a single eps the
accuracy-vs-eps plot shows two points (clean, and robust at that eps) and no line: a
line between them would suggest a curve nobody measured.

matplotlib is imported only when plots are drawn: it is heavy, and the report's Markdown
needs only the file names (:data:`PLOTS`).
"""

from __future__ import annotations

from pathlib import Path

from bastion.fsutil import atomic_path

#: plot -> its file name in the report directory
PLOTS = {"accuracy_vs_eps": "robust_accuracy_vs_eps.png", "per_class": "per_class.png",
         "loss_traces": "loss_traces.png"}


def write_plots(report: dict, out_dir: Path) -> dict[str, Path]:
    paths = {}
    for key in PLOTS:
        fig = figure(key, report)
        try:
            paths[key] = out_dir / PLOTS[key]
            with atomic_path(paths[key]) as tmp:
                fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        finally:
            _pyplot().close(fig)
    return paths


def figure(key: str, report: dict):
    """The matplotlib figure of plot ``key`` (a key of :data:`PLOTS`); the caller closes it."""
    painters = {"accuracy_vs_eps": _accuracy_vs_eps, "per_class": _per_class, "loss_traces": _loss_traces}
    return painters[key](_pyplot(), report)


def _pyplot():
    import matplotlib  # heavy optional dependency: only when plots are drawn

    matplotlib.use("Agg")  # files only; never open a window (and work without a display)
    import matplotlib.pyplot as plt

    return plt


def _title(report: dict, what: str) -> str:
    s = report["summary"]
    return f"{what}\n{s['model']}, suite {s['suite']}, {s['n']} samples"


def _error_bars(entries: list[dict], key: str) -> list[list[float]] | None:
    """matplotlib's asymmetric ``yerr`` (in percent) from the entries' ``key_ci``; None if a report has none."""
    cis = [e.get(f"{key}_ci") for e in entries]
    if not all(cis):
        return None
    return [[100 * (e[key] - ci["low"]) for e, ci in zip(entries, cis)],
            [100 * (ci["high"] - e[key]) for e, ci in zip(entries, cis)]]


def _accuracy_vs_eps(plt, report: dict):
    results, summary = report["results"], report["summary"]
    curve = len(results) > 1  # one eps is a point, not a curve
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = {"capsize": 4, "elinewidth": 1}
    ax.errorbar([0.0], [100 * summary["clean_accuracy"]], yerr=_error_bars([summary], "clean_accuracy"),
                marker="s", linestyle="none", color="tab:green", label="clean (eps 0)", **bars)
    eps = [r["eps"] for r in results]
    if curve:  # robust accuracy at eps 0 is the clean accuracy: the curve starts there
        ax.plot([0.0, eps[0]], [100 * summary["clean_accuracy"], 100 * results[0]["robust_accuracy"]],
                linestyle="-", color="tab:blue")
    ax.errorbar(eps, [100 * r["robust_accuracy"] for r in results], yerr=_error_bars(results, "robust_accuracy"),
                marker="o", linestyle="-" if curve else "none", color="tab:blue",
                label="robust: worst case over the suite", **bars)
    if any(r["robust_accuracy_raw"] != r["robust_accuracy"] for r in results):
        ax.plot(eps, [100 * r["robust_accuracy_raw"] for r in results], marker="x", linestyle="--",
                color="tab:orange", label="attacks at this eps only")
    if not curve:
        ax.set_xticks([0.0, eps[0]])
        ax.set_xlim(-0.15 * eps[0], 1.15 * eps[0])
    ax.set_xlabel(f"{report['suite']['norm']} eps (0 = clean)")
    ax.set_ylabel("accuracy (%), 95% intervals")
    ax.set_ylim(-2, 102)  # room for markers at 0% and 100%
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(_title(report, "Robust accuracy vs eps"))
    return fig


def _per_class(plt, report: dict):
    result = report["results"][-1]
    per_class = result["per_class"]
    classes = [str(c["class"]) for c in per_class]
    positions = range(len(classes))
    width = 0.4
    bars = {"capsize": 3, "error_kw": {"elinewidth": 1, "ecolor": "0.3"}}
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes)), 4))
    ax.bar([p - width / 2 for p in positions], [100 * c["clean_accuracy"] for c in per_class], width,
           yerr=_error_bars(per_class, "clean_accuracy"), label="clean", **bars)
    ax.bar([p + width / 2 for p in positions], [100 * c["robust_accuracy"] for c in per_class], width,
           yerr=_error_bars(per_class, "robust_accuracy"), label=f"robust (eps {result['eps']:g})", **bars)
    ax.set_xticks(list(positions), classes)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy (%), 95% intervals")
    ax.set_ylim(0, 105)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    gap = result["class_gap"].get("robust", {})
    interval = gap.get("gap_ci")
    shown = f", 95% CI [{100 * interval['low']:.0f}, {100 * interval['high']:.0f}]%" if interval else ""
    ax.set_title(_title(report, f"Per-class accuracy (robust best-worst gap {gap.get('gap', 0.0):.1%}{shown})"))
    return fig


def _loss_traces(plt, report: dict):
    """One panel per white-box attack: their objectives (CE, DLR, ...) live on different scales."""
    result = report["results"][-1]
    traced = [a for a in result["attacks"] if a["family"] == "white-box" and len(a["loss_trace"]) > 1]
    columns = max(1, min(len(traced), 3))
    rows = max(1, -(-len(traced) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, attack in zip(axes.flat, traced):
        ax.plot(range(len(attack["loss_trace"])), attack["loss_trace"])
        ax.set_title(attack["attack"], fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("mean loss (attack's objective)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(traced):]:
        ax.axis("off")
    if not traced:
        axes[0][0].text(0.5, 0.5, "no multi-step white-box attack ran", ha="center", va="center")
    fig.suptitle(_title(report, f"White-box attack loss at eps {result['eps']:g}, over the samples still standing"),
                 fontsize=10)
    fig.tight_layout()
    return fig
