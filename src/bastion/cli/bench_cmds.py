"""`bastion bench`: run an attack suite and report worst-case robust accuracy; gate on it; compare two runs."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from bastion.cli import main
from bastion.cli.attack_cmds import (ACCELERATION_PARAMS, acceleration_from, acceleration_options, check_onnx_runtime,
                                     parse_eps)
from bastion.cli.bench_checks import (COMPARE_ONLY, RUN_ONLY, Gate, compare_and_print, given_options,
                                      parse_tolerance)
from bastion.cli.common import (choose_samples, data_option, device_option, emit_json, json_option, pick_device,
                                quiet_option, resume_requested, seed_option, weights_option)
from bastion.cli.progress import BenchProgress, Progress
from bastion.errors import UsageError
from bastion.evaluation.report_format import accuracy_text, interval_text, percent

#: Samples `bastion bench` attacks by default. Measured: the standard suite on
#: mnist-cnn-robust costs about 2.5 CPU-seconds per sample that survives APGD-CE
#: (one thread); measured 2026-12-02: 100 samples of the standard suite took 5 min 41 s on 2 idle cores.
DEFAULT_N = 100
ROBUST_DEFAULT = "mnist-cnn-robust"


@main.command()
@click.option("--model", "-m", "model_ref", default=None,
              help=f"Zoo name, bundle directory, .pt2 file, or package.module:factory (with --weights). "
                   f"[default: {ROBUST_DEFAULT}, or mnist-cnn where its weights are missing]")
@weights_option
@data_option
@click.option("--suite", "-s", "suite_ref", default="standard", show_default=True,
              help="Suite name (quick, standard, fast, l2, sweep) or path to a suite .toml file.")
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
@click.option("--require", "requirement", metavar="EXPR",
              help='CI gate: exit 1 unless the run meets EXPR, e.g. "robust_accuracy[0.3] >= 0.85 and flags == 0" '
                   "(the grammar of `bastion verify --require`); the report is written either way.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False),
              help="Write JUnit XML for CI: a test case per --require clause and per attack-failure indicator "
                   "(with --compare: per compared accuracy).")
@click.option("--compare", "compare_pair", nargs=2, type=click.Path(), metavar="RUN_A RUN_B",
              help="Run nothing: compare two finished runs (run directories or report.json files), B against A.")
@click.option("--require-no-regression", is_flag=True,
              help="With --compare: exit 1 if B's clean accuracy or its robust accuracy at any eps both measured "
                   "is below A's by more than --tolerance.")
@click.option("--tolerance", default="0", show_default=True,
              help="With --compare: the accuracy drop that is not yet a regression (a fraction or a percentage: "
                   "0.01 or 1%).")
@click.option("--allow-different-data", is_flag=True,
              help="With --compare: compare reports measured on different data (accuracies only).")
@click.option("--allow-different-suite", is_flag=True,
              help="With --compare: compare reports of different attacks or attack parameters.")
@click.option("--verify-key", type=click.Path(dir_okay=False),
              help="Load the model only if its signature verifies under this public key (every Ray worker "
                   "verifies it too).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where shards run: here, or on a Ray cluster (pip install \"bastion[ray]\").")
@click.option("--address", default=None,
              help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT. [default: RAY_ADDRESS, the cluster last "
                   "started on this machine, else a new local one]")
@click.option("--shard-size", type=int, default=None,
              help="Samples per shard; each shard is checkpointed when done, with a seed derived from --seed and "
                   "its index (the same on either executor). [default with --executor ray: 100; local: no shards]")
@click.option("--workers", type=int, default=None,
              help="Ray workers to start (one model load each). [default: as many as the cluster has free CPUs, "
                   "or GPUs with a cuda device]")
@acceleration_options
@json_option
@quiet_option
@seed_option
@device_option
@click.pass_context
def bench(ctx, model_ref, weights, data_ref, suite_ref, eps, n, out_dir, resume, batch_size, trust_code, verify_key,
          executor, address, shard_size, workers, requirement, junit_path, compare_pair, require_no_regression,
          tolerance, allow_different_data, allow_different_suite, use_compile, channels_last, bf16, onnx_runtime,
          as_json, quiet, seed, device):
    """Benchmark a model's robustness with an attack suite (worst case per sample).

    With no options: the bundled robust MNIST model, the standard (AutoAttack) suite,
    the first 100 bundled test images. Writes report.json, report.md and PNG plots;
    every accuracy comes with its 95% confidence interval.

    With --shard-size or --executor ray the samples are cut into shards that run on their
    own (on a Ray cluster in parallel) and merge into one report.

    \b
    Gate a CI job on the result (exit 1 when unmet, 2 for a malformed requirement):
      bastion bench --suite quick --require "robust_accuracy[0.3] >= 0.85 and flags == 0" --junit bench.xml
    Compare two runs (exit 1 under --require-no-regression if B is worse):
      bastion bench --compare runs/main runs/branch --require-no-regression
    """
    if compare_pair:
        clash = given_options(ctx, RUN_ONLY + ACCELERATION_PARAMS)
        if clash:
            raise UsageError(f"--compare reads two finished runs; drop {', '.join(clash)} (they apply to a run)")
        compare_and_print(compare_pair, tolerance=parse_tolerance(tolerance),
                          allow_different_data=allow_different_data, allow_different_suite=allow_different_suite,
                          require_no_regression=require_no_regression, junit_path=junit_path, as_json=as_json,
                          quiet=quiet)
        return
    from bastion.data import load_data
    from bastion.distributed import ModelSource, RayExecutor, import_ray
    from bastion.evaluation import benchmark, load_suite
    from bastion.evaluation.bench import (CHECKPOINT, SHARD_CHECKPOINTS, check_inputs, check_report_folder,
                                          has_checkpoint)
    from bastion.evaluation.shards import DEFAULT_SHARD_SIZE
    from bastion.fsutil import make_output_dir

    clash = given_options(ctx, COMPARE_ONLY)
    if clash:
        raise UsageError(f"{', '.join(clash)} appl{'y' if len(clash) > 1 else 'ies'} with --compare RUN_A RUN_B only")
    gate = Gate.parse(requirement, junit_path)
    if n is not None and n <= 0:
        raise UsageError("--n must be positive")
    if batch_size is not None and batch_size <= 0:
        raise UsageError("--batch-size must be positive")
    if shard_size is not None and shard_size <= 0:
        raise UsageError("--shard-size must be positive")
    if executor == "ray":
        import_ray()  # without the extra: one line saying how to install it, before any work
    elif address is not None or workers is not None:
        raise UsageError("--address and --workers need --executor ray")
    notes = []
    if model_ref is None:
        model_ref = _default_model(notes)
    suite = load_suite(suite_ref)
    if eps:
        suite = suite.with_eps(parse_eps(eps))
    gate.check_measurable(suite.epsilons)
    # With Ray, --device names the workers' device; the driver (digests, indicators) uses its own.
    dev = pick_device(device if executor == "local" or device == "cpu" else "auto")
    acceleration = acceleration_from(use_compile, channels_last, bf16)
    if onnx_runtime and verify_key:
        raise UsageError("--onnx-runtime: a verified ONNX model is attacked through its torch conversion; drop "
                         "--onnx-runtime or --verify-key")
    forward_only = all(spec.family != "white-box" for spec in suite.attacks)  # runs an ONNX model on onnxruntime
    source = ModelSource.resolve(model_ref, weights=weights, trust_code=trust_code, verify_key=verify_key,
                                 onnx_runtime=onnx_runtime or forward_only)
    runner = None
    if executor == "ray":
        runner = RayExecutor(source, address=address, workers=workers, device=device)
        runner.check_address()
    loaded = source.load(dev)
    check_onnx_runtime(onnx_runtime, loaded)
    all_data = load_data(data_ref, "test", bounds=loaded.bounds)
    data = choose_samples(all_data, n, DEFAULT_N)
    if n is None and len(all_data) > len(data):
        notes.append(f"attacking the first {len(data)} of {len(all_data)} test samples (the default, sized to "
                     "take about 6 minutes on 2 CPU cores); use --n to change it")
    if runner is not None and len(data) <= (shard_size or DEFAULT_SHARD_SIZE):
        notes.append(f"{len(data)} samples make one shard of up to {shard_size or DEFAULT_SHARD_SIZE}: one Ray worker "
                     "will run them all; use a smaller --shard-size to spread them")
    out = Path(out_dir) if out_dir else Path("runs") / f"bench-{_slug(loaded.name)}-{_slug(suite.name)}"
    check_report_folder(out)
    check_inputs(loaded, data, suite, batch_size=batch_size)  # every refusal before the first line printed
    sharded = shard_size is not None or runner is not None
    resume = resume_requested(resume, has_checkpoint(out, sharded=sharded),
                              out / (SHARD_CHECKPOINTS if sharded else CHECKPOINT))
    make_output_dir(out, "report folder")
    if not resume and has_checkpoint(out, sharded=sharded):
        notes.append(f"{out} holds an earlier run; starting over (use --resume to continue it)")
    if not quiet and not as_json:
        for note in notes:
            click.echo(f"note: {note}", err=True)
    command = "bastion " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with Progress(enabled=not quiet) as progress:
        report = benchmark(loaded, data, suite, out_dir=out, seed=seed, resume=resume, batch_size=batch_size,
                           on_event=BenchProgress(progress), command=command, shard_size=shard_size,
                           executor=runner, acceleration=acceleration)
    outcomes = gate.judge(report)
    gate.write_junit(report, out, outcomes)
    if as_json:
        emit_json({**_json_summary(report, out, notes), **gate.summary(outcomes, report)})
    elif not quiet:
        _print_summary(report, out)
        for line in gate.lines(outcomes, report):
            click.echo(line)
    gate.exit_if_unmet(outcomes, out)


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
                         "robust_accuracy_ci": r["robust_accuracy_ci"],
                         "attacks": [{k: a[k] for k in SUMMARY_ATTACK_KEYS} for a in r["attacks"]],
                         "class_gap": r["class_gap"]} for r in report["results"]],
            "indicators": [{k: i[k] for k in ("key", "status", "finding")} for i in report["indicators"]],
            "timing": report["timing"], "evaluation": report["evaluation"], "files": report.get("files", {}),
            **({"execution": _execution_summary(report["execution"])} if "execution" in report else {})}


def _execution_summary(execution: dict) -> dict:
    shards = execution["shards"]
    return {"executor": execution["executor"], "shard_size": execution["shard_size"], "shards": len(shards),
            "from_checkpoint": sum(s["from_checkpoint"] for s in shards),
            "processes": execution["processes"], "wall_seconds": execution["wall_seconds"]}


def _print_summary(report: dict, out: Path) -> None:
    s = report["summary"]
    click.echo(f"{s['model']}: {s['n']} samples of {report['data']['name']}, suite {s['suite']} ({s['norm']}); "
               "95% confidence intervals (Clopper-Pearson)")
    used = report["evaluation"]["accelerations"]
    if used:
        click.echo(f"  accelerations: {', '.join(used)} (agree with fp32 eager; adversarials re-checked in fp32 eager)")
    click.echo(f"  clean accuracy            {accuracy_text(s['clean_accuracy'], s['clean_accuracy_ci'])}")
    for r in report["results"]:
        click.echo(f"  robust accuracy eps {r['eps']:<6g}{accuracy_text(r['robust_accuracy'], r['robust_accuracy_ci'])}")
    last = report["results"][-1]
    for a in last["attacks"]:
        failed = f"  FAILED: {a['error']}" if a.get("error") else ""
        click.echo(f"    {a['attack']:<12} broke {a['broken_first']:>4} of {a['attacked']:<5} "
                   f"{a['seconds']:7.1f} s{failed}")
    gap = last["class_gap"].get("robust")
    if gap:
        click.echo(f"  per-class robust accuracy gap {percent(gap['gap'])} (95% CI "
                   f"{interval_text(gap['gap_ci'], signed=True)}; best class {gap['best_class']}, "
                   f"worst {gap['worst_class']}, picked after the fact)")
    fired = [i for i in report["indicators"] if i["status"] == "fired"]
    checked = sum(1 for i in report["indicators"] if i["status"] != "skipped")
    click.echo(f"  attack-failure indicators: {len(fired)} fired of {checked} checked")
    for i in fired:
        click.echo(f"    WARNING {i['title']}: {i['finding']} What to do: {i['advice']}")
    t = report["timing"]
    click.echo(f"  time: attacks {t['attacks_seconds']:.1f} s, indicators {t['indicators_seconds']:.1f} s")
    if "execution" in report:
        e = _execution_summary(report["execution"])
        resumed = f", {e['from_checkpoint']} from the checkpoint" if e["from_checkpoint"] else ""
        click.echo(f"  shards: {e['shards']} of up to {e['shard_size']} samples on {e['processes']} {e['executor']} "
                   f"worker process(es){resumed}, {e['wall_seconds']:.1f} s wall")
    click.echo(f"  report: {out / 'report.md'} (also report.json and 3 PNG plots)")
