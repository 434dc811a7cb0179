"""`bastion bench`: run an attack suite and report worst-case robust accuracy."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from bastion.cli import main
from bastion.cli.attack_cmds import parse_eps
from bastion.cli.common import (choose_samples, data_option, device_option, emit_json, json_option, pick_device,
                                quiet_option, resume_requested, seed_option, weights_option)
from bastion.cli.progress import BenchProgress, Progress
from bastion.errors import UsageError

#: Samples `bastion bench` attacks by default. Measured: the standard suite on
#: mnist-cnn-robust costs about 2.5 CPU-seconds per sample that survives APGD-CE
#: (one thread), so 100 samples stay under 5 minutes on 2 cores with room to spare.
DEFAULT_N = 100
ROBUST_DEFAULT = "mnist-cnn-robust"


@main.command()
@click.option("--model", "-m", "model_ref", default=None,
              help=f"Zoo name, bundle directory, .pt2 file, or package.module:factory (with --weights). "
                   f"[default: {ROBUST_DEFAULT}, or mnist-cnn where its weights are missing]")
@weights_option
@data_option
@click.option("--suite", "-s", "suite_ref", default="standard", show_default=True,
              help="Suite name (quick, standard, l2, sweep) or path to a suite .toml file.")
@click.option("--eps", "-e", multiple=True, help="Override the suite's eps; repeat or comma-separate for a sweep.")
@click.option("--n", "n", type=int, default=None,
              help=f"Number of test samples: exactly this many (refused if the data holds fewer). "
                   f"[default: {DEFAULT_N}, or all if the data holds fewer]")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False),
              help="Report directory. [default: runs/bench-MODEL-SUITE]")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run in --out without redoing finished attacks (with no checkpoint "
                   "there: a warning on stderr, and a new run).")
@click.option("--batch-size", type=int, default=None, help="Attack batch size (default: each attack's own).")
@click.option("--trust-code", is_flag=True, help="Allow a bundle's architecture to import Python code.")
@json_option
@quiet_option
@seed_option
@device_option
def bench(model_ref, weights, data_ref, suite_ref, eps, n, out_dir, resume, batch_size, trust_code, as_json, quiet,
          seed, device):
    """Benchmark a model's robustness with an attack suite (worst case per sample).

    With no options: the bundled robust MNIST model, the standard (AutoAttack) suite,
    the first 100 bundled test images. Writes report.json, report.md and PNG plots.
    """
    from bastion.data import load_data
    from bastion.evaluation import benchmark, load_suite
    from bastion.evaluation.bench import CHECKPOINT, check_inputs, check_report_folder
    from bastion.fsutil import make_output_dir
    from bastion.models import load_model

    if batch_size is not None and batch_size <= 0:
        raise UsageError("--batch-size must be positive")
    notes = []
    if model_ref is None:
        model_ref = _default_model(notes)
    suite = load_suite(suite_ref)
    if eps:
        suite = suite.with_eps(parse_eps(eps))
    dev = pick_device(device)
    loaded = load_model(model_ref, weights=weights, device=dev, trust_code=trust_code)
    all_data = load_data(data_ref, "test", bounds=loaded.bounds)
    data = choose_samples(all_data, n, DEFAULT_N)
    if n is None and len(all_data) > len(data):
        notes.append(f"attacking the first {len(data)} of {len(all_data)} test samples (the default, sized to "
                     "finish in under 5 minutes on 2 CPU cores); use --n to change it")
    out = Path(out_dir) if out_dir else Path("runs") / f"bench-{_slug(loaded.name)}-{_slug(suite.name)}"
    check_report_folder(out)
    check_inputs(loaded, data, suite, batch_size=batch_size)  # every refusal before the first line printed
    resume = resume_requested(resume, out / CHECKPOINT)
    make_output_dir(out, "report folder")
    if not resume and (out / CHECKPOINT).exists():
        notes.append(f"{out} holds an earlier run; starting over (use --resume to continue it)")
    if not quiet and not as_json:
        for note in notes:
            click.echo(f"note: {note}", err=True)
    command = "bastion " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with Progress(enabled=not quiet) as progress:
        report = benchmark(loaded, data, suite, out_dir=out, seed=seed, resume=resume, batch_size=batch_size,
                           on_event=BenchProgress(progress), command=command)
    if as_json:
        emit_json(_json_summary(report, out, notes))
    elif not quiet:
        _print_summary(report, out)


def _default_model(notes: list[str]) -> str:
    from bastion.models.zoo import zoo_path

    if (zoo_path(ROBUST_DEFAULT) / "bastion.toml").is_file():
        return ROBUST_DEFAULT
    notes.append(f"{ROBUST_DEFAULT} weights are not installed; benchmarking mnist-cnn (standard training) instead")
    return "mnist-cnn"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-.") or "model"


SUMMARY_ATTACK_KEYS = ("attack", "attacked", "broken_first", "seconds", "queries", "error")


def _json_summary(report: dict, out: Path, notes: list[str]) -> dict:
    return {**report["summary"], "out": str(out), "notes": notes,
            "results": [{"eps": r["eps"], "robust_accuracy": r["robust_accuracy"],
                         "attacks": [{k: a[k] for k in SUMMARY_ATTACK_KEYS} for a in r["attacks"]],
                         "class_gap": r["class_gap"]} for r in report["results"]],
            "indicators": [{k: i[k] for k in ("key", "status", "finding")} for i in report["indicators"]],
            "timing": report["timing"], "files": report.get("files", {})}


def _print_summary(report: dict, out: Path) -> None:
    s = report["summary"]
    click.echo(f"{s['model']}: {s['n']} samples of {report['data']['name']}, suite {s['suite']} ({s['norm']})")
    click.echo(f"  clean accuracy            {s['clean_accuracy']:.2%}")
    for r in report["results"]:
        click.echo(f"  robust accuracy eps {r['eps']:<6g}{r['robust_accuracy']:.2%}")
    last = report["results"][-1]
    for a in last["attacks"]:
        failed = f"  FAILED: {a['error']}" if a.get("error") else ""
        click.echo(f"    {a['attack']:<12} broke {a['broken_first']:>4} of {a['attacked']:<5} "
                   f"{a['seconds']:7.1f} s{failed}")
    gap = last["class_gap"].get("robust")
    if gap:
        click.echo(f"  per-class robust accuracy gap {gap['gap']:.2%} (best class {gap['best_class']}, "
                   f"worst {gap['worst_class']})")
    fired = [i for i in report["indicators"] if i["status"] == "fired"]
    checked = sum(1 for i in report["indicators"] if i["status"] != "skipped")
    click.echo(f"  attack-failure indicators: {len(fired)} fired of {checked} checked")
    for i in fired:
        click.echo(f"    WARNING {i['title']}: {i['finding']} What to do: {i['advice']}")
    t = report["timing"]
    click.echo(f"  time: attacks {t['attacks_seconds']:.1f} s, indicators {t['indicators_seconds']:.1f} s")
    click.echo(f"  report: {out / 'report.md'} (also report.json and 3 PNG plots)")
