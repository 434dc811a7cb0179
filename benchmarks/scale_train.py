"""Data-parallel training: one process against several torchrun processes at the same global batch.

    python benchmarks/scale_train.py                                   # fast-ema, 1 vs 2 processes, full recipe
    python benchmarks/scale_train.py --recipe trades --epochs 10 --processes 1,2 --repeats 2
    python benchmarks/scale_train.py --recipe fast-ema --epochs 1 --n-train 400 --n-test 50 --steps 5   # smoke run

Each run is ``bastion train --recipe R --nproc N`` (``python -m bastion.train``) in a subprocess on
the first --n-train images of the recipe's training data, with this host's cores split evenly over
the N processes (OMP_NUM_THREADS = cores / N; each rank sets the same itself). The recipe's
batch_size is the global batch in every run: N processes take batch_size / N each, so the runs
train the same algorithm and differ only in their random draws. Repeats are interleaved (1, 2, 1,
2, ...) and the time per epoch is the median over repeats of the trainer's own wall time per epoch
(held-out check included: rank 0 runs it alone, so it does not shrink with N), which leaves out
process start-up; the subprocess's whole wall time is reported beside it.

Each trained bundle is then judged on the first --n-test test images at the recipe's norm and eps:
clean accuracy and robust accuracy under bastion's APGD-CE (--steps). "Within noise" means each
accuracy differs from the one-process run's by at most two standard errors of the difference
(binomial, sqrt(p1(1-p1)/n + p2(1-p2)/n)).

The last line is one JSON object with every figure (:func:`run_training_scaling` returns it, for
``benchmarks/scale.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bastion.attacks import get_attack
from bastion.catalog import resolve
from bastion.data import load_data
from bastion.defenses.training import load_recipe
from bastion.defenses.training.distributed import threads_per_process
from bastion.models import load_model
from bastion.threat import ThreatModel


def add_training_arguments(parser: argparse.ArgumentParser, repeats_flag: str = "--repeats") -> None:
    """The training part's options; ``repeats_flag`` renames --repeats where the host script has its own."""
    group = parser.add_argument_group("training scaling")
    group.add_argument("--recipe", default="fast-ema", help="recipe name or path (default fast-ema)")
    group.add_argument("--epochs", type=int, default=None, help="override the recipe's epoch count")
    group.add_argument("--processes", default="1,2", help="comma-separated process counts (default 1,2)")
    group.add_argument(repeats_flag, dest="train_repeats", type=int, default=1, help="interleaved repeats of each process count")
    group.add_argument("--n-train", type=int, default=None, help="training images (default: the whole split)")
    group.add_argument("--n-test", type=int, default=1000, help="test images to judge each bundle on")
    group.add_argument("--steps", type=int, default=100, help="APGD-CE steps of the robust accuracy")
    group.add_argument("--train-out", default=None, help="where the bundles go (default: a temporary folder)")


def run_training_scaling(args: argparse.Namespace) -> dict:
    """Train ``args.recipe`` with each process count, time it, judge the bundles; the figures as a dict."""
    recipe = load_recipe(resolve("defenses", args.recipe))
    processes = [int(p) for p in str(args.processes).split(",")]
    with tempfile.TemporaryDirectory(prefix="scale-train-") as scratch:
        out = Path(args.train_out or scratch)
        out.mkdir(parents=True, exist_ok=True)
        data = load_data(recipe.data.dataset, "train")
        if args.n_train:
            data = data.take(args.n_train)
        data_file = out / "train.npz"
        np.savez(data_file, x=data.x.numpy(), y=data.y.numpy())
        timings: dict[int, list[dict]] = {n: [] for n in processes}
        for repeat in range(args.train_repeats):
            for n in processes:
                bundle = out / f"nproc{n}-r{repeat}"
                timings[n].append(_train(args, data_file, bundle, n))
                print(f"  [{n} process(es), repeat {repeat + 1}] {timings[n][-1]['seconds_per_epoch']:.2f} s/epoch",
                      file=sys.stderr, flush=True)
        test = load_data(recipe.data.dataset, "test").take(args.n_test)
        threat = ThreatModel(norm=recipe.threat.norm, eps=recipe.threat.eps, bounds=test.bounds)
        runs = []
        for n in processes:
            last = timings[n][-1]
            runs.append({"processes": n, "batch_per_process": recipe.optimizer.batch_size // n,
                         "threads_per_process": threads_per_process(n),
                         "seconds_per_epoch": round(statistics.median(t["seconds_per_epoch"] for t in timings[n]), 3),
                         "wall_seconds": round(statistics.median(t["wall_seconds"] for t in timings[n]), 1),
                         **_judge(Path(last["bundle"]), test, threat, args.steps)})
    base = runs[0]
    for run in runs[1:]:
        run["speedup"] = round(base["seconds_per_epoch"] / run["seconds_per_epoch"], 3)
        run["efficiency"] = round(run["speedup"] * base["processes"] / run["processes"], 3)
        for key in ("clean", "robust"):
            p, q = base[key], run[key]
            bound = 2 * math.sqrt(p * (1 - p) / len(test) + q * (1 - q) / len(test))
            run[f"{key}_gap"] = round(q - p, 4)
            run[f"{key}_noise_2se"] = round(bound, 4)
            run[f"{key}_within_noise"] = abs(q - p) <= bound
    return {"recipe": recipe.name, "epochs": args.epochs or recipe.optimizer.epochs, "n_train": len(data),
            "n_test": len(test), "global_batch": recipe.optimizer.batch_size, "eps": recipe.threat.eps,
            "norm": recipe.threat.norm, "attack": f"apgd-ce-{args.steps}", "repeats": args.train_repeats,
            "cores": threads_per_process(1), "runs": runs}


def _train(args, data_file: Path, bundle: Path, processes: int) -> dict:
    command = [sys.executable, "-m", "bastion.train", "--recipe", args.recipe, "--data", str(data_file), "--out",
               str(bundle), "--nproc", str(processes), "--json"]
    if args.epochs:
        command += ["--epochs", str(args.epochs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_process(processes))}
    load_before, started = os.getloadavg()[0], time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    metrics = json.loads(done.stdout)["metrics"]
    return {"bundle": str(bundle), "seconds_per_epoch": metrics["seconds"] / metrics["epochs_run"],
            "wall_seconds": wall, "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def _judge(bundle: Path, test, threat: ThreatModel, steps: int) -> dict:
    model = load_model(str(bundle)).module
    result = get_attack("apgd-ce")(threat, steps=steps, seed=0).run(model, test.x, test.y)[0]
    return {"clean": round(result.clean_accuracy, 4), "robust": round(result.robust_accuracy, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_arguments(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for judging (default: all cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or threads_per_process(1))
    figures = run_training_scaling(args)
    for run in figures["runs"]:
        extra = "" if "speedup" not in run else (
            f"  speedup {run['speedup']:.2f}x, efficiency {run['efficiency']:.0%}, clean {run['clean_gap']:+.1%} "
            f"(noise +-{run['clean_noise_2se']:.1%}), robust {run['robust_gap']:+.1%} "
            f"(+-{run['robust_noise_2se']:.1%})")
        print(f"{run['processes']} process(es), {run['batch_per_process']} per process: "
              f"{run['seconds_per_epoch']:.2f} s/epoch, clean {run['clean']:.1%}, robust {run['robust']:.1%}{extra}")
    print(json.dumps({"training": figures}))


if __name__ == "__main__":
    main()
