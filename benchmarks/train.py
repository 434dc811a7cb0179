"""Adversarial training figures: train each recipe, judge it with bastion's standard suite and with ART.

    python benchmarks/train.py --recipe trades-awp                # the zoo candidate (issue 15)
    python benchmarks/train.py --recipe fast-ema                  # the fast candidate
    python benchmarks/train.py --recipe trades --recipe fast      # the earlier recipes (README history)
    python benchmarks/train.py --recipe trades-awp --set awp.gamma=0 --set average.decay=0   # ablations
    python benchmarks/train.py --recipe fast --set optimizer.lr=0.002 --set optimizer.batch_size=128 --epochs 30
    python benchmarks/train.py --recipe trades-awp --raw          # also judge the raw (non-averaged) weights
    python benchmarks/train.py --eval-only path/to/bundle [--eval-only ...]
    python benchmarks/train.py --recipe trades-awp --zoo          # ship the result as the zoo's mnist-cnn-robust
    python benchmarks/train.py --recipe fast-ema --n 20 --epochs 1 --art-square-queries 100   # smoke run

Training runs as `bastion train` does, on --threads threads (default 2, this machine's cores);
the table reports its wall and CPU time and the load average, since a busy machine stretches wall
time. Evaluation on the first --n test images (default all 1,000) at Linf --eps (0.3):

- bastion: the standard suite (`attacks/standard.toml`: APGD-CE, APGD-T, FAB-T, Square 5,000
  queries; AutoAttack's budgets), worst case per sample, with its attack-failure indicators;
- ART, independently: its own `AutoProjectedGradientDescent` with loss_type cross_entropy and
  difference_logits_ratio (100 iterations, 1 restart each) and its `SquareAttack` (--art-square-queries
  iterations, default 5,000), worst case per sample over the three; every adversarial ART returns is
  clipped into the eps ball and the bounds and re-predicted here.

It then prints both side by side, how many samples one broke that the other did not, and, for the
recipes issue 15 sets floors for, each floor with pass or FAIL. The last line is one JSON object
with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

from bastion.catalog import resolve
from bastion.data import load_data
from bastion.defenses.training import load_recipe, save_trained_bundle, train
from bastion.defenses.training.trainer import TrainingMonitor
from bastion.evaluation import benchmark, load_suite
from bastion.models import load_model
from bastion.models.zoo import zoo_path

ROBUST_RECIPES = ["fast-ema", "trades-awp", "fast", "trades", "pgd-at", "mart"]


@dataclasses.dataclass(frozen=True)
class Floors:
    """Issue 15's floors for a recipe's result (fractions and seconds)."""

    robust: float
    train_seconds: float
    clean: float | None = None
    art_gap: float = 0.005  # ART's robust accuracy at most this much above bastion's


ZOO_FLOORS = Floors(robust=0.92, clean=0.985, train_seconds=900)
FAST_FLOORS = Floors(robust=0.88, train_seconds=240)
FLOORS = {"trades-awp": ZOO_FLOORS, "trades": ZOO_FLOORS, "mnist-cnn-robust": ZOO_FLOORS,  # --eval-only of the zoo
          "fast-ema": FAST_FLOORS, "fast": FAST_FLOORS}


# ---- evaluation ----------------------------------------------------------------------

def standard_suite(bundle: Path, test, eps: float, seed: int) -> dict:
    """Clean and worst-case robust accuracy under the standard suite, with each attack's breaks and time."""
    report = benchmark(load_model(str(bundle)), test, load_suite("standard").with_eps([eps]), seed=seed)
    summary, result = report["summary"], report["results"][0]
    attacks = {a["attack"]: {"broke": a["broken_first"], "seconds": round(a["seconds"], 1)} for a in result["attacks"]}
    for name, row in attacks.items():
        print(f"    bastion {name}: broke {row['broke']} ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return {"clean": summary["clean_accuracy"], "robust": summary["robust_accuracy"], "attacks": attacks,
            "indicators_fired": summary["indicators_fired"], "robust_indices": result["robust_indices"]}


def art_attacks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 100,
                square_queries: int = 5000, seed: int = 0) -> dict:
    """ART's APGD-CE, APGD-DLR and Square, worst case per sample: each runs on the samples every
    earlier one left standing (a sample broken by any one is broken, as running all on all would say)."""
    from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                   nb_classes=10, clip_values=(0.0, 1.0))
    x_np, y_np = x.numpy(), y.numpy()
    robust = classifier.predict(x_np, batch_size=500).argmax(1) == y_np
    clean = float(robust.mean())

    def apgd(loss_type):
        return AutoProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=steps,
                                            nb_random_init=1, batch_size=500, loss_type=loss_type, verbose=False)

    attacks = {
        "APGD-CE": lambda: apgd("cross_entropy"),
        "APGD-DLR": lambda: apgd("difference_logits_ratio"),
        # One batch of all standing samples: ART's Square loops in Python per iteration and per batch.
        "Square": lambda: SquareAttack(classifier, norm=np.inf, eps=eps, max_iter=square_queries, p_init=0.8,
                                       nb_restarts=1, batch_size=max(int(robust.sum()), 1), verbose=False),
    }
    rows = {}
    for name, make in attacks.items():
        standing = np.flatnonzero(robust)
        start, broke = time.perf_counter(), 0
        if len(standing):
            np.random.seed(seed)
            torch.manual_seed(seed)
            x_adv = make().generate(x_np[standing], y_np[standing])
            x0 = x_np[standing]
            x_adv = np.clip(np.clip(x_adv, x0 - eps, x0 + eps), 0.0, 1.0)  # re-check: in the ball, in bounds
            fooled = classifier.predict(x_adv, batch_size=500).argmax(1) != y_np[standing]
            robust[standing[fooled]] = False
            broke = int(fooled.sum())
        rows[name] = {"broke": broke, "seconds": round(time.perf_counter() - start, 1)}
        print(f"    ART {name}: broke {broke} ({rows[name]['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return {"clean": clean, "robust": float(robust.mean()), "attacks": rows,
            "robust_indices": np.flatnonzero(robust).tolist()}


def evaluate(bundle: Path, test, args) -> dict:
    figures = {"bastion": standard_suite(bundle, test, args.eps, args.seed)}
    if not args.no_art:
        art = art_attacks(load_model(str(bundle)).module, test.x, test.y, args.eps,
                          square_queries=args.art_square_queries, seed=args.seed)
        # Per-sample comparison; the index lists themselves stay out of the summary.
        ours, theirs = set(figures["bastion"].pop("robust_indices")), set(art.pop("robust_indices"))
        art["broke_what_bastion_did_not"] = len(ours - theirs)
        art["bastion_broke_what_art_did_not"] = len(theirs - ours)
        art["robust_under_both"] = len(ours & theirs) / len(test)
        figures["art"] = art
    return figures


# ---- training ------------------------------------------------------------------------

class EpochPrinter(TrainingMonitor):
    def __init__(self, name: str) -> None:
        self.name = name

    def epoch(self, record):
        awp = " awp" if record.get("awp") else ""
        line = (f"  [{self.name}] epoch {record['epoch']:>3} eps {record['eps']:.3f}{awp} loss {record['loss']:.3f} "
                f"held-out clean {record.get('holdout_clean', 0):.1%} robust {record.get('holdout_robust', 0):.1%} "
                f"({record['seconds']:.0f} s)")
        print(line, file=sys.stderr, flush=True)

    def message(self, text):
        print(f"  [{self.name}] {text}", file=sys.stderr, flush=True)


def parse_settings(pairs: list[str]) -> dict:
    """``--set section.key=value`` pairs, values read as TOML (``0.002``, ``true``, ``"sgd"``)."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair}: expected section.key=value")
        try:
            settings[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            settings[key.strip()] = value.strip()  # a bare word: a string
    return settings


def train_recipe(name: str, label: str, settings: dict, out_dir: Path, args) -> list[tuple[str, Path, dict]]:
    """Train one recipe; the bundle (and with --raw, a bundle of the raw weights) and training figures."""
    folder = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-")  # a label with --set values in it
    recipe = load_recipe(resolve("defenses", name)).with_overrides(epochs=args.epochs)
    if settings:
        recipe = recipe.with_settings(settings)
    data = load_data(recipe.data.dataset, "train")
    load_before = os.getloadavg()[0]
    result = train(recipe, data, checkpoint_dir=out_dir / f"{folder}.ckpt", resume=args.resume,
                   monitor=EpochPrinter(label))
    info = {"recipe": recipe.name, "settings": settings, "architecture": recipe.model.architecture,
            "epochs": result.metrics["epochs_run"], "train_seconds": result.metrics["seconds"],
            "train_cpu_seconds": result.metrics["cpu_seconds"],
            "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)], "events": result.events,
            "weights": result.metrics["weights"], "holdout_robust": result.metrics.get("holdout_robust")}
    jobs = [(label, save_trained_bundle(result, out_dir / folder, data, name=f"{recipe.model.architecture}-{folder}"),
             info)]
    if args.raw and result.raw_model is not None:
        raw = dataclasses.replace(result, model=result.raw_model)
        bundle = save_trained_bundle(raw, out_dir / f"{folder}-raw", data,
                                     name=f"{recipe.model.architecture}-{folder}-raw", extra={"weights": "raw"})
        jobs.append((f"{label}:raw", bundle, {**info, "weights": "raw"}))
    return jobs


def ship_to_zoo(bundle: Path, figures: dict) -> None:
    """Copy a trained bundle into the zoo as mnist-cnn-robust, with its test figures in `training`."""
    from bastion.models.bundle import save_bundle

    loaded = load_model(str(bundle))
    meta = loaded.meta
    meta.name = "mnist-cnn-robust"
    meta.training = {**meta.training, "evaluation": figures}
    save_bundle(loaded.module, zoo_path("mnist-cnn-robust"), meta)
    print(f"shipped {bundle} as the zoo's mnist-cnn-robust", file=sys.stderr)


# ---- the table -----------------------------------------------------------------------

def floor_checks(label: str, row: dict) -> list[str]:
    floors = FLOORS.get(row.get("recipe", label))
    if floors is None or row.get("settings") or row.get("weights") == "raw":
        return []
    ours = row["bastion"]
    checks = [(f"robust {ours['robust']:.2%} >= {floors.robust:.1%}", ours["robust"] >= floors.robust),
              ("no attack-failure indicator" if not ours["indicators_fired"] else
               f"indicators fired: {', '.join(ours['indicators_fired'])}", not ours["indicators_fired"])]
    if floors.clean is not None:
        checks.append((f"clean {ours['clean']:.2%} >= {floors.clean:.1%}", ours["clean"] >= floors.clean))
    if "train_seconds" in row:
        checks.append((f"training {row['train_seconds']:.0f} s <= {floors.train_seconds:.0f} s",
                       row["train_seconds"] <= floors.train_seconds))
    if "art" in row:
        gap = row["art"]["robust"] - ours["robust"]
        checks.append((f"ART - bastion {gap * 100:+.1f} points <= {floors.art_gap * 100:.1f}", gap <= floors.art_gap))
    return [f"  {'pass' if ok else 'FAIL'}  {label}: {text}" for text, ok in checks]


def print_table(rows: dict, args, n: int) -> None:
    print(f"\nLinf eps {args.eps}, {n} MNIST test images; bastion: worst case over the standard suite "
          f"(APGD-CE, APGD-T, FAB-T, Square 5,000); ART: worst case over its APGD-CE, APGD-DLR (100 iterations) "
          f"and Square ({args.art_square_queries:,}); training on {args.threads} thread(s)")
    print(f"{'recipe':<24} {'epochs':>6} {'train s':>8} {'CPU s':>7} {'load':>11} {'clean':>7} {'bastion':>8} "
          f"{'ART':>7} {'ART-only':>8} {'both':>7}")
    for label, row in rows.items():
        ours, art = row["bastion"], row.get("art")
        load = "-" if "load_avg" not in row else f"{row['load_avg'][0]:.1f}-{row['load_avg'][1]:.1f}"
        art_robust, art_only, both = ((f"{art['robust']:.2%}", art["broke_what_bastion_did_not"],
                                       f"{art['robust_under_both']:.2%}") if art else ("-", "-", "-"))
        print(f"{label:<24} {row.get('epochs', '-'):>6} {row.get('train_seconds', '-'):>8} "
              f"{row.get('train_cpu_seconds', '-'):>7} {load:>11} {ours['clean']:>7.1%} {ours['robust']:>8.2%} "
              f"{art_robust:>7} {art_only:>8} {both:>7}")
        breaks = ", ".join(f"{k} {v['broke']}" for k, v in ours["attacks"].items())
        print(f"    bastion broke: {breaks}; indicators fired: {', '.join(ours['indicators_fired']) or 'none'}")
        if art:
            art_breaks = ", ".join(f"{k} {v['broke']}" for k, v in art["attacks"].items())
            print(f"    ART broke: {art_breaks}")
    checks = [line for label, row in rows.items() for line in floor_checks(label, row)]
    if checks:
        print("\nissue 15's floors:")
        print("\n".join(checks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", action="append", help="recipe name or path (repeatable)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="change a recipe setting for this run (repeatable; applies to every --recipe)")
    parser.add_argument("--eval-only", action="append", default=[], help="evaluate an existing bundle")
    parser.add_argument("--epochs", type=int, help="override every recipe's epoch count")
    parser.add_argument("--raw", action="store_true", help="also judge the raw weights of averaging recipes")
    parser.add_argument("--n", type=int, default=1000, help="test images to evaluate (default: all 1,000)")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training and evaluation")
    parser.add_argument("--out", default="bench-out/train", help="where trained bundles go")
    parser.add_argument("--resume", action="store_true", help="resume interrupted trainings")
    parser.add_argument("--no-art", action="store_true", help="skip ART's independent evaluation")
    parser.add_argument("--art-square-queries", type=int, default=5000, help="ART SquareAttack max_iter")
    parser.add_argument("--zoo", action="store_true", help="ship the most robust result as mnist-cnn-robust")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    test = load_data("mnist", "test").take(args.n)
    out_dir = Path(args.out)
    settings = parse_settings(args.settings)
    suffix = ",".join(f"{k}={v}" for k, v in settings.items())
    jobs: list[tuple[str, Path, dict]] = [(Path(b).name, Path(b), {}) for b in args.eval_only]
    if not args.eval_only or args.recipe:
        for name in args.recipe or ROBUST_RECIPES:
            label = Path(name).stem + (f"[{suffix}]" if suffix else "")
            jobs.extend(train_recipe(name, label, settings, out_dir, args))

    rows = {}
    for label, bundle, info in jobs:
        rows[label] = {**info, **evaluate(bundle, test, args), "bundle": str(bundle)}
        print(f"  [{label}] evaluated", file=sys.stderr, flush=True)
    print_table(rows, args, len(test))
    if args.zoo and rows:
        best = max(rows, key=lambda k: (rows[k]["bastion"]["clean"] >= 0.97, rows[k]["bastion"]["robust"]))
        ship_to_zoo(Path(rows[best]["bundle"]), {k: v for k, v in rows[best].items() if k != "bundle"}
                    | {"n": len(test), "eps": args.eps, "suite": "standard"})
    for row in rows.values():
        row["bastion"].pop("robust_indices", None)  # left when ART did not run
    print(json.dumps({"benchmark": "train", "eps": args.eps, "n": len(test), "suite": "standard",
                      "art_square_queries": None if args.no_art else args.art_square_queries,
                      "threads": args.threads, "results": rows}))


if __name__ == "__main__":
    main()
