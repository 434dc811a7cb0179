"""The benchmark report: built from a run's state as JSON, rendered to Markdown, written atomically."""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from bastion.evaluation.plots import PLOTS, write_plots
from bastion.evaluation.state import RunState
from bastion.evaluation.suite import Suite
from bastion.fsutil import atomic_write_text

SCHEMA = "bastion.bench.report/1"


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
    indicators = [i.to_dict() for i in state.indicators or ()]
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": {"model": run["model"]["name"], "suite": suite.name, "norm": suite.norm,
                    "eps": headline["eps"], "n": n, "clean_accuracy": _share(clean),
                    "robust_accuracy": headline["robust_accuracy"],
                    "indicators_fired": [i["key"] for i in indicators if i["status"] == "fired"]},
        "model": run["model"], "data": run["data"], "seed": state.fingerprint.seed,
        "device": run.get("device", "cpu"), "command": run.get("command", ""),
        "suite": suite.to_dict(),
        "order": _order(state),
        "clean_correct_indices": list(state.clean_correct),
        "results": results,
        "indicators": indicators,
        "timing": {"attacks_seconds": sum(u.seconds for u in state.units),
                   "indicators_seconds": state.indicator_seconds},
        "versions": package_versions(),
    }


def _order(state: RunState) -> dict:
    """Which order the attacks ran in and why (the runner may run black-box attacks first)."""
    if state.order is None:  # a state from before the runner chose orders: the units' own order
        return {"attacks": list(dict.fromkeys(u.attack for u in state.units)), "adapted": False,
                "gradients_masked": False, "reason": "The attacks ran in the order the suite declares."}
    return {k: v for k, v in state.order.to_dict().items() if k not in ("probe", "probe_seconds")}


def _eps_result(state: RunState, eps, raw, robust, clean, y, num_classes) -> dict:
    attacks = [{"attack": unit.attack, "name": unit.name, "family": unit.family, "params": unit.params,
                "attacked": unit.standing, "broken_first": len(unit.broken), "broken_indices": list(unit.broken),
                "unconfirmed": unit.unconfirmed, "seconds": unit.seconds, "queries": unit.queries,
                "loss_trace": list(unit.loss_trace), "error": unit.error}
               for unit in state.units_at(eps)]
    per_class = []
    for c in range(num_classes):
        members = y == c
        count = int(members.sum())
        if count:
            per_class.append({"class": c, "n": count, "clean_accuracy": _share(clean[members]),
                              "robust_accuracy": _share(robust[members])})
    return {"eps": eps, "robust_accuracy": _share(robust),
            "robust_accuracy_raw": _share(raw),
            "broken_at_smaller_eps": int((raw & ~robust).sum()),
            "robust_indices": robust.nonzero().flatten().tolist(),
            "attacks": attacks, "per_class": per_class, "class_gap": _gap(per_class)}


def _share(mask: torch.Tensor) -> float:
    return int(mask.sum()) / max(len(mask), 1)


def _gap(per_class: list[dict]) -> dict:
    if not per_class:
        return {}
    gap = {}
    for which in ("clean", "robust"):
        key = f"{which}_accuracy"
        best = max(per_class, key=lambda r: r[key])
        worst = min(per_class, key=lambda r: r[key])
        gap[which] = {"gap": best[key] - worst[key], "best_class": best["class"], "worst_class": worst["class"]}
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
             "| | accuracy |", "|---|---|", f"| clean | {s['clean_accuracy']:.2%} |",
             f"| robust at {suite['norm']} eps {s['eps']:g} (worst case over the suite) | "
             f"{s['robust_accuracy']:.2%} |", ""]
    fired = [i for i in report["indicators"] if i["status"] == "fired"]
    if fired:
        lines += [f"**Warning: {len(fired)} attack-failure indicator(s) fired** "
                  f"({', '.join(i['title'] for i in fired)}): the robust accuracy may be overestimated. "
                  "See below.", ""]
    order = report.get("order")
    if order and order["adapted"]:
        lines += [f"**Attack order adapted:** {order['reason']}", ""]
    if len(report["results"]) > 1:
        lines += ["## Robust accuracy per eps", "", "| eps | robust accuracy | (before counting smaller-eps breaks) |",
                  "|---|---|---|"]
        lines += [f"| {r['eps']:g} | {r['robust_accuracy']:.2%} | {r['robust_accuracy_raw']:.2%} |"
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
              f"- model `{report['model'].get('source', '')}` sha256 `{report['model'].get('sha256', '')[:16]}...`",
              f"- suite file `{suite['path']}` sha256 `{suite['sha256'][:16]}...`",
              f"- attack order: {', '.join(order['attacks'])} ({order['reason']})" if order else "",
              f"- command: `{report['command']}`" if report["command"] else "- command: (library call)",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "platform"), ""]
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
    lines += ["", f"Per class at {title}:", "", "| class | n | clean | robust |", "|---|---|---|---|"]
    lines += [f"| {c['class']} | {c['n']} | {c['clean_accuracy']:.2%} | {c['robust_accuracy']:.2%} |"
              for c in result["per_class"]]
    if gap:
        lines += ["", f"Gap between best and worst class: clean {gap['clean']['gap']:.2%} "
                  f"(best {gap['clean']['best_class']}, worst {gap['clean']['worst_class']}), robust "
                  f"{gap['robust']['gap']:.2%} (best {gap['robust']['best_class']}, "
                  f"worst {gap['robust']['worst_class']}).", ""]
    return lines


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """report.json, report.md and the PNG plots, each written atomically; returns their paths."""
    out = Path(out_dir)
    paths = write_plots(report, out)
    paths["markdown"] = out / "report.md"
    atomic_write_text(paths["markdown"], render_markdown(report))
    paths["json"] = out / "report.json"
    atomic_write_text(paths["json"], json.dumps(report, indent=1))
    return paths
