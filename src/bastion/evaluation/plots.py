"""PNG plots of a benchmark report: robust accuracy vs eps, per-class bars, white-box loss traces.

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
    plt = _pyplot()
    painters = {"accuracy_vs_eps": _accuracy_vs_eps, "per_class": _per_class, "loss_traces": _loss_traces}
    paths = {}
    for key, painter in painters.items():
        fig = painter(plt, report)
        try:
            paths[key] = out_dir / PLOTS[key]
            with atomic_path(paths[key]) as tmp:
                fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        finally:
            plt.close(fig)
    return paths


def _pyplot():
    import matplotlib  # heavy optional dependency: only when plots are drawn

    matplotlib.use("Agg")  # files only; never open a window (and work without a display)
    import matplotlib.pyplot as plt

    return plt


def _title(report: dict, what: str) -> str:
    s = report["summary"]
    return f"{what}\n{s['model']}, suite {s['suite']}, {s['n']} samples"


def _accuracy_vs_eps(plt, report: dict):
    results = report["results"]
    eps = [0.0] + [r["eps"] for r in results]
    robust = [report["summary"]["clean_accuracy"]] + [r["robust_accuracy"] for r in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(eps, [100 * a for a in robust], marker="o", label="worst case over the suite")
    if any(r["robust_accuracy_raw"] != r["robust_accuracy"] for r in results):
        raw = [robust[0]] + [r["robust_accuracy_raw"] for r in results]
        ax.plot(eps, [100 * a for a in raw], marker="x", linestyle="--", label="attacks at this eps only")
    ax.set_xlabel(f"{report['suite']['norm']} eps (0 = clean)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)  # room for markers at 0% and 100%
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(_title(report, "Robust accuracy vs eps"))
    return fig


def _per_class(plt, report: dict):
    result = report["results"][-1]
    classes = [str(c["class"]) for c in result["per_class"]]
    positions = range(len(classes))
    width = 0.4
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes)), 4))
    ax.bar([p - width / 2 for p in positions], [100 * c["clean_accuracy"] for c in result["per_class"]], width,
           label="clean")
    ax.bar([p + width / 2 for p in positions], [100 * c["robust_accuracy"] for c in result["per_class"]], width,
           label=f"robust (eps {result['eps']:g})")
    ax.set_xticks(list(positions), classes)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    gap = result["class_gap"].get("robust", {}).get("gap", 0.0)
    ax.set_title(_title(report, f"Per-class accuracy (robust best-worst gap {gap:.1%})"))
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
