"""The benchmark report: built from a run's state as JSON, rendered to Markdown, written atomically.

Schema ``bastion.bench.report/1``. Every accuracy ``X`` (clean, robust per eps, per class)
has a sibling ``X_ci = {"k", "n", "low", "high"}``: its exact count (``k`` of ``n``
samples) and its 95% Clopper-Pearson interval; each best-worst class gap has ``gap_ci =
{"low", "high"}`` (see :mod:`~bastion.evaluation.intervals`, named under ``intervals``).
These fields were added to /1 without changing any earlier field's name, type or meaning,
so every /1 reader keeps working; a reader that needs counts from an earlier /1 report
recovers them from its per-sample indices (:mod:`~bastion.evaluation.compare` does).
Numbers are written to the precision they carry (:mod:`~bastion.evaluation.report_format`).
"""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from bastion.evaluation.intervals import METHODS, Proportion, selected_gap
from bastion.evaluation.plots import PLOTS, write_plots
from bastion.evaluation.report_format import (SCHEMA, fraction, interval_text, measured, outward, percent,
                                             proportion_ci, seconds)
from bastion.evaluation.state import RunState
from bastion.evaluation.suite import Suite
from bastion.fsutil import atomic_write_text


def build_report(state: RunState, suite: Suite, y: torch.Tensor, num_classes: int, *, run: dict[str, Any]) -> dict:
    """Everything a reader or a policy needs; ``run`` holds model, data, seed, device and the command."""
    n = len(y)
    y = y.cpu()
    clean = torch.zeros(n, dtype=torch.bool)
    clean[torch.tensor(state.clean_correct, dtype=torch.long)] = True
    results, carried_broken = [], torch.zeros(n, dtype=torch.bool)
    for eps in suite.epsilons:
        raw = state.robust_mask(eps, n)
        # Eps balls are nested: an adversarial found at a smaller eps also counts at this one.
        robust = raw & ~carried_broken
        carried_broken |= clean & ~raw
        results.append(_eps_result(state, eps, raw, robust, clean, y, num_classes))
    headline = results[-1]
    indicators = [{**i.to_dict(), "details": measured(i.details)} for i in state.indicators or ()]
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": {"model": run["model"]["name"], "suite": suite.name, "norm": suite.norm,
                    "eps": headline["eps"], "n": n, **_accuracy("clean_accuracy", clean),
                    "robust_accuracy": headline["robust_accuracy"],
                    "robust_accuracy_ci": headline["robust_accuracy_ci"],
                    "indicators_fired": [i["key"] for i in indicators if i["status"] == "fired"]},
        "intervals": dict(METHODS),
        "model": run["model"], "data": run["data"], "seed": state.fingerprint.seed,
        "device": run.get("device", "cpu"), "command": run.get("command", ""),
        "suite": suite.to_dict(),
        "clean_correct_indices": list(state.clean_correct),
        "results": results,
        "indicators": indicators,
        "timing": {"attacks_seconds": seconds(sum(u.seconds for u in state.units)),
                   "indicators_seconds": seconds(state.indicator_seconds)},
        "versions": package_versions(),
    }


def _eps_result(state: RunState, eps, raw, robust, clean, y, num_classes) -> dict:
    attacks = [{"attack": unit.attack, "name": unit.name, "family": unit.family, "params": unit.params,
                "attacked": unit.standing, "broken_first": len(unit.broken), "broken_indices": list(unit.broken),
                "unconfirmed": unit.unconfirmed, "seconds": seconds(unit.seconds), "queries": unit.queries,
                "loss_trace": measured(unit.loss_trace), "error": unit.error}
               for unit in state.units_at(eps)]
    per_class = []
    for c in range(num_classes):
        members = y == c
        count = int(members.sum())
        if count:
            per_class.append({"class": c, "n": count, **_accuracy("clean_accuracy", clean[members]),
                              **_accuracy("robust_accuracy", robust[members])})
    return {"eps": eps, **_accuracy("robust_accuracy", robust),
            **_accuracy("robust_accuracy_raw", raw),
            "broken_at_smaller_eps": int((raw & ~robust).sum()),
            "robust_indices": robust.nonzero().flatten().tolist(),
            "attacks": attacks, "per_class": per_class, "class_gap": _gap(per_class)}


def _accuracy(name: str, mask: torch.Tensor) -> dict[str, Any]:
    """``{name: k/n, name_ci: {k, n, low, high}}`` for the samples ``mask`` marks."""
    p = Proportion(int(mask.sum()), len(mask))
    return {name: fraction(p.value), f"{name}_ci": proportion_ci(p)}


def _gap(per_class: list[dict]) -> dict:
    """Best and worst class by accuracy, their gap and its interval (see :func:`selected_gap`)."""
    if not per_class:
        return {}
    gap = {}
    for which in ("clean", "robust"):
        key = f"{which}_accuracy_ci"
        counted = [(Proportion(r[key]["k"], r[key]["n"]), r["class"]) for r in per_class]
        best, best_class = max(counted, key=lambda pc: pc[0].value)
        # On a tie for the worst, another class than the best: a class has no gap with itself.
        worst, worst_class = min(counted, key=lambda pc: (pc[0].value, pc[1] == best_class))
        interval = selected_gap(best, worst) if worst_class != best_class else (0.0, 0.0)
        gap[which] = {"gap": fraction(best.value - worst.value), "best_class": best_class,
                      "worst_class": worst_class, "gap_ci": outward(interval, -1.0, 1.0)}
    return gap


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("bastion", "torch", "numpy", "adversarial-robustness-toolbox"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def render_markdown(report: dict) -> str:
    s, suite = report["summary"], report["suite"]
    lines = [f"# Robustness report: {s['model']}", "",
             f"Suite **{suite['name']}** ({suite['description'] or 'no description'}), {suite['norm']} norm; "
             f"{s['n']} samples of {report['data']['name']}; seed {report['seed']}; device {report['device']}.", "",
             "| | accuracy | samples | 95% CI (Clopper-Pearson) |", "|---|---|---|---|",
             _accuracy_row("clean", s, "clean_accuracy"),
             _accuracy_row(f"robust at {suite['norm']} eps {s['eps']:g} (worst case over the suite)", s,
                           "robust_accuracy"), ""]
    fired = [i for i in report["indicators"] if i["status"] == "fired"]
    if fired:
        lines += [f"**Warning: {len(fired)} attack-failure indicator(s) fired** "
                  f"({', '.join(i['title'] for i in fired)}): the robust accuracy may be overestimated. "
                  "See below.", ""]
    if len(report["results"]) > 1:
        lines += ["## Robust accuracy per eps", "",
                  "| eps | robust accuracy | samples | 95% CI | (before counting smaller-eps breaks) |",
                  "|---|---|---|---|---|"]
        lines += [_accuracy_row(f"{r['eps']:g}", r, "robust_accuracy") + f" {percent(r['robust_accuracy_raw'])} |"
                  for r in report["results"]]
        lines += ["", f"![robust accuracy vs eps]({PLOTS['accuracy_vs_eps']})", ""]
    for result in report["results"]:
        # Per-class tables only at the headline (largest) eps: a sweep would repeat them per eps.
        lines += _eps_section(result, s["n"], many=len(report["results"]) > 1,
                              per_class=result is report["results"][-1])
    lines += [f"![per-class accuracy]({PLOTS['per_class']})", "", f"![loss traces]({PLOTS['loss_traces']})", ""]
    lines += ["## Attack-failure indicators", "",
              "Checks after Carlini et al. 2019 and Pintor et al. 2022 that the attacks did not fail silently.", ""]
    mark = {"ok": "ok", "fired": "**FIRED**", "skipped": "skipped"}
    lines += ["| indicator | status | finding |", "|---|---|---|"]
    lines += [f"| {i['title']} | {mark[i['status']]} | {i['finding']} |" for i in report["indicators"]]
    for i in fired:
        lines += ["", f"**{i['title']}.** {i['meaning']} *What to do:* {i['advice']}"]
    t = report["timing"]
    lines += ["", "## Run", "", f"- attacks {t['attacks_seconds']:.1f} s, indicators {t['indicators_seconds']:.1f} s",
              f"- intervals: {report['intervals']['level']:.0%}, {report['intervals']['proportion']} for "
              f"accuracies, {report['intervals']['difference']} for differences",
              f"- model `{report['model'].get('source', '')}` sha256 `{report['model'].get('sha256', '')[:16]}...`",
              f"- suite file `{suite['path']}` sha256 `{suite['sha256'][:16]}...`",
              f"- command: `{report['command']}`" if report["command"] else "- command: (library call)",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "platform"), ""]
    if "execution" in report:  # a sharded run (bastion.evaluation.executors)
        e = report["execution"]
        lines[-1:-1] = [f"- {len(e['shards'])} shard(s) of up to {e['shard_size']} samples on {e['processes']} "
                        f"{e['executor']} worker process(es); each shard's samples, seed, host, pid and device are in "
                        "report.json (`execution`)"]
    return "\n".join(lines)


def _eps_section(result: dict, n: int, many: bool, per_class: bool) -> list[str]:
    title = f"eps {result['eps']:g}"
    lines = [f"## Attacks at {title}", "",
             "| attack | attacked | broke first | robust after | time (s) | queries | parameters |",
             "|---|---|---|---|---|---|---|"]
    remaining = None
    for a in result["attacks"]:
        remaining = a["attacked"] - a["broken_first"]
        params = ", ".join(f"{k}={v}" for k, v in a["params"].items() if k not in ("norm", "batch_size", "seed"))
        failed = f" (failed: {a['error']})" if a.get("error") else ""
        lines.append(f"| {a['attack']}{failed} | {a['attacked']} | {a['broken_first']} | {remaining / n:.2%} | "
                     f"{a['seconds']:.1f} | {a['queries']} | {params} |")
    if many and result["broken_at_smaller_eps"]:
        lines += ["", f"{result['broken_at_smaller_eps']} more sample(s) count as broken because an attack broke "
                  "them at a smaller eps."]
    gap = result["class_gap"]
    if not per_class:
        return lines + [""]
    lines += ["", f"Per class at {title} (95% Clopper-Pearson intervals):", "",
              "| class | n | clean | 95% CI | robust | 95% CI |", "|---|---|---|---|---|---|"]
    lines += [f"| {c['class']} | {c['n']} | {percent(c['clean_accuracy'])} | {interval_text(c['clean_accuracy_ci'])} | "
              f"{percent(c['robust_accuracy'])} | {interval_text(c['robust_accuracy_ci'])} |"
              for c in result["per_class"]]
    if gap:
        clean, robust = gap["clean"], gap["robust"]
        lines += ["", f"Gap between best and worst class: clean {percent(clean['gap'])} "
                  f"(best {clean['best_class']}, worst {clean['worst_class']}; 95% CI "
                  f"{interval_text(clean['gap_ci'], signed=True)}), robust {percent(robust['gap'])} "
                  f"(best {robust['best_class']}, worst {robust['worst_class']}; 95% CI "
                  f"{interval_text(robust['gap_ci'], signed=True)}). The best and worst class are picked after "
                  "the fact, so these intervals are optimistic about that choice.", ""]
    return lines


def _accuracy_row(label: str, entry: dict, key: str) -> str:
    """A Markdown table row: label, accuracy, k/n and the interval of ``entry[key]``."""
    ci = entry[f"{key}_ci"]
    return f"| {label} | {percent(entry[key])} | {ci['k']}/{ci['n']} | {interval_text(ci)} |"


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """report.json, report.md and the PNG plots, each written atomically; returns their paths."""
    out = Path(out_dir)
    paths = write_plots(report, out)
    paths["markdown"] = out / "report.md"
    atomic_write_text(paths["markdown"], render_markdown(report))
    paths["json"] = out / "report.json"
    atomic_write_text(paths["json"], json.dumps(report, indent=1))
    return paths
