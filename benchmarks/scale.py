"""Scale-out: the same benchmark on the local runner, on 1 Ray worker and on 2 Ray workers, in one run.

Bench part (issue 14). The first N bundled MNIST test images, cut into shards of --shard-size,
run through one suite three ways, with the same shard layout and seeds:

  local     the local executor: the shards one after another in this process (one torch thread)
  ray-1     the Ray executor with 1 worker (an actor with 1 CPU and 1 torch thread)
  ray-2     the Ray executor with 2 workers

Each configuration runs --repeats times, interleaved (local, ray-1, ray-2, then again in the
other order), and the table shows medians. Throughput is samples per second of the shard phase:
from the first shard handed out (here only once every worker is up) to the last one back, so
worker start-up (a new process importing torch and loading the model, paid once per run however
many shards follow) and the indicators (computed once on the driver after the merge) are left
out; both are shown beside it.
The per-sample outcomes of the three must be identical (the script checks it on every repeat).

Ratios: ray-2 / ray-1 (floor on a 2-core machine: 1.7) and its efficiency against the ideal
(ratio / 2); ray-1 / local (what Ray's dispatch costs).

By default it starts a local Ray cluster with 2 CPUs; --address points it at a running one
(`ray start --head --num-cpus 2` here, or a real cluster: then --workers-list 1,4,8 compares more).

    python benchmarks/scale.py [--n 600] [--shard-size 50] [--suite quick] [--repeats 3]
    python benchmarks/scale.py --n 8 --shard-size 2 --repeats 1            # smoke run

Training part: benchmarks/scale_train.py (torchrun with 1 vs 2 processes at the same global batch;
its options here, with --train-repeats for its repeats). --part picks which run (default: all).
The last line printed is one JSON object: {"bench": {...}, "training": {...}}, one key per part.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack

import torch

from bastion.data import load_data
from bastion.distributed import ModelSource, RayExecutor, import_ray, local_cluster
from bastion.evaluation import BenchInputs, load_suite
from bastion.evaluation.executors import LocalExecutor, ShardFinished, ShardStarted, run_sharded
from bastion.evaluation.shards import ShardLayout
from scale_train import add_training_arguments, run_training_scaling  # the training part (same folder)

FLOOR_TWO_WORKERS = 1.7  # ray-2 / ray-1 throughput on a 2-core machine


class ShardClock:
    """Times the shard phase of a run from its events: first shard handed out to last shard back."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None

    def __call__(self, event) -> None:
        now = time.perf_counter()
        if isinstance(event, ShardStarted) and self.first is None:
            self.first = now
        elif isinstance(event, ShardFinished):
            self.last = now

    @property
    def seconds(self) -> float:
        return (self.last or 0.0) - (self.first or 0.0)


def outcomes(state) -> tuple:
    """What must not depend on where the shards ran: every per-sample outcome of the run."""
    return (state.clean_correct, tuple((u.key, u.standing, u.broken, u.unconfirmed, u.queries) for u in state.units))


def bench_part(args) -> dict:
    torch.set_num_threads(1)
    source = ModelSource.resolve(args.model)
    model = source.load("cpu")
    data = load_data("mnist", "test").take(args.n)
    suite = load_suite(args.suite)
    if args.eps:
        suite = suite.with_eps([float(e) for e in args.eps.split(",")])
    inputs = BenchInputs(model.module, data.x, data.y, data.bounds, model.num_classes or data.num_classes)
    layout = ShardLayout.contiguous(len(data), args.shard_size, args.seed)
    counts = [int(w) for w in args.workers_list.split(",")]
    configs: dict[str, Callable[[], object]] = {"local": LocalExecutor}
    configs.update({f"ray-{k}": (lambda k=k: RayExecutor(source, workers=k, address=args.address, wait_for_workers=True)) for k in counts})
    with ExitStack() as stack:
        if args.address is None:
            stack.enter_context(local_cluster(args.cpus))
        else:
            ray = import_ray()
            ray.init(address=args.address, log_to_driver=False)
            stack.callback(ray.shutdown)
        runs = measure(configs, inputs, suite, layout, args)
    table = {name: median_row(samples, layout.n) for name, samples in runs.items()}
    print(f"\n{layout.n} samples in {len(layout.shards)} shards of {layout.size}, suite {suite.name}, "
          f"model {args.model}, {args.repeats} repeat(s), medians:")
    print(f"{'run':<10}{'samples/s':>12}{'shard phase s':>15}{'wall s':>10}")
    for name, row in table.items():
        print(f"{name:<10}{row['samples_per_second']:>12.2f}{row['shard_seconds']:>15.2f}{row['wall_seconds']:>10.2f}")
    ratios = scaling_ratios(table, counts)
    floor = ratios.get("ray_2_vs_ray_1")
    if floor is not None:
        verdict = "pass" if floor >= FLOOR_TWO_WORKERS else "FAIL"
        print(f"ray-2 / ray-1 = {floor:.2f}x (efficiency {floor / 2:.0%}; floor {FLOOR_TWO_WORKERS}x): {verdict}")
    return {"n": layout.n, "shard_size": layout.size, "shards": len(layout.shards), "suite": suite.name,
            "model": args.model, "repeats": args.repeats, "cpu_count": os.cpu_count(), "identical_outcomes": True,
            "runs": table, "ratios": ratios, "floor_two_workers": FLOOR_TWO_WORKERS,
            "floor_met": None if floor is None else floor >= FLOOR_TWO_WORKERS, "load_average": os.getloadavg()}


def measure(configs, inputs, suite, layout, args) -> dict[str, list[dict]]:
    """Every configuration --repeats times, interleaved; stops if the per-sample outcomes ever differ."""
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    reference = None
    for repeat in range(args.repeats):
        for name in list(configs) if repeat % 2 == 0 else list(reversed(configs)):
            clock = ShardClock()
            began = time.perf_counter()
            run = run_sharded(inputs, suite, layout, configs[name](), seed=args.seed, on_event=clock)
            wall = time.perf_counter() - began
            if reference is None:
                reference = outcomes(run.state)
            elif outcomes(run.state) != reference:
                raise SystemExit(f"{name}: per-sample outcomes differ from the first run's (repeat {repeat + 1})")
            runs[name].append({"shard_seconds": clock.seconds, "wall_seconds": wall,
                               "workers": run.record()["processes"]})
            print(f"  repeat {repeat + 1} {name:<8} shards {clock.seconds:7.2f} s  wall {wall:7.2f} s",
                  file=sys.stderr, flush=True)
    return runs


def median_row(samples: list[dict], n: int) -> dict:
    seconds = statistics.median(s["shard_seconds"] for s in samples)
    wall = statistics.median(s["wall_seconds"] for s in samples)
    return {"samples_per_second": n / seconds if seconds else float("nan"), "shard_seconds": seconds,
            "wall_seconds": wall, "startup_and_indicators_seconds": wall - seconds, "workers": samples[0]["workers"]}


def scaling_ratios(table: dict, counts: list[int]) -> dict:
    ratios = {}
    one = table.get("ray-1")
    if not one:
        return ratios
    for k in counts:
        if k != 1:
            ratio = table[f"ray-{k}"]["samples_per_second"] / one["samples_per_second"]
            ratios[f"ray_{k}_vs_ray_1"] = ratio
            ratios[f"ray_{k}_efficiency"] = ratio / k
    ratios["ray_1_vs_local"] = one["samples_per_second"] / table["local"]["samples_per_second"]
    return ratios


#: The parts of this benchmark, each a function of the parsed arguments returning its JSON section.
PARTS: dict[str, Callable[[argparse.Namespace], dict]] = {"bench": bench_part, "training": run_training_scaling}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--n", type=int, default=600, help="test images (default 600)")
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--eps", default=None, help="override the suite's eps (comma-separated)")
    parser.add_argument("--model", default="mnist-cnn-robust",
                        help="robust by default, so most samples use every attack's whole budget")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers-list", default="1,2", help="Ray worker counts to run (default 1,2)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster started here")
    parser.add_argument("--address", default=None, help="a running Ray cluster instead of a local one")
    add_training_arguments(parser, repeats_flag="--train-repeats")
    args = parser.parse_args()
    parts = list(PARTS) if args.part == "all" else [args.part]
    print(json.dumps({name: PARTS[name](args) for name in parts}))


if __name__ == "__main__":
    main()
