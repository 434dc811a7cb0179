"""Adversarial training figures: train each recipe, then benchmark it with bastion's standard suite.

    python benchmarks/train.py --recipe fast                      # issue 4's fast recipe
    python benchmarks/train.py --recipe trades                    # the zoo's mnist-cnn-robust
    python benchmarks/train.py --recipe fgsm-rs --n 300
    python benchmarks/train.py --eval-only path/to/bundle [--eval-only ...]
    python benchmarks/train.py --recipe trades --zoo    # also ship the result as the zoo's mnist-cnn-robust

Training runs as `bastion train` does, on --threads threads (default 2, this machine's cores);
the table reports its wall and CPU time and the load average, since a busy machine stretches wall
time. Evaluation is the standard suite (`attacks/standard.toml`: APGD-CE, APGD-T, FAB-T, Square
5,000 queries; AutoAttack's budgets), worst case per sample, on the first --n test images. The peer
column re-attacks the same model with ART's APGD-CE, an independent implementation, so a figure
cannot come from a weakness of bastion's own attacks. The last line is one JSON object with every
figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from bastion.catalog import resolve
from bastion.data import load_data
from bastion.defenses.training import load_recipe, save_trained_bundle, train
from bastion.defenses.training.trainer import TrainingMonitor
from bastion.evaluation import benchmark, load_suite
from bastion.models import load_model
from bastion.models.zoo import zoo_path

ROBUST_RECIPES = ["fast", "pgd-at", "trades", "mart"]


def standard_suite(bundle: Path, test, eps: float, seed: int) -> dict:
    """Clean and worst-case robust accuracy under the standard suite, with each attack's breaks and time."""
    report = benchmark(load_model(str(bundle)), test, load_suite("standard").with_eps([eps]), seed=seed)
    summary = report["summary"]
    attacks = {a["attack"]: {"broke": a["broken_first"], "seconds": round(a["seconds"], 1)}
               for a in report["results"][0]["attacks"]}
    for name, row in attacks.items():
        print(f"    {name}: broke {row['broke']} ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return {"clean": summary["clean_accuracy"], "robust": summary["robust_accuracy"], "attacks": attacks,
            "indicators_fired": summary["indicators_fired"]}


def art_apgd_ce(model, x, y, eps: float) -> float:
    """Robust accuracy under ART's APGD-CE (100 iterations, 1 restart): the peer check."""
    import numpy as np
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                                   nb_classes=10, clip_values=(0.0, 1.0))
    attack = AutoProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=100,
                                          nb_random_init=1, batch_size=500, loss_type="cross_entropy",
                                          verbose=False)
    x_np, y_np = x.numpy(), y.numpy()
    x_adv = attack.generate(x_np, y_np)
    x_adv = np.clip(np.minimum(np.maximum(x_adv, x_np - eps), x_np + eps), 0, 1)
    return float((classifier.predict(x_adv).argmax(1) == y_np).mean())


class EpochPrinter(TrainingMonitor):
    def __init__(self, name: str) -> None:
        self.name = name

    def epoch(self, record):
        line = (f"  [{self.name}] epoch {record['epoch']:>3} eps {record['eps']:.3f} loss {record['loss']:.3f} "
                f"held-out clean {record.get('holdout_clean', 0):.1%} robust {record.get('holdout_robust', 0):.1%} "
                f"({record['seconds']:.0f} s)")
        print(line, file=sys.stderr, flush=True)

    def message(self, text):
        print(f"  [{self.name}] {text}", file=sys.stderr, flush=True)


def train_recipe(name: str, out_dir: Path, epochs: int | None, resume: bool) -> tuple[Path, dict]:
    recipe = load_recipe(resolve("defenses", name)).with_overrides(epochs=epochs)
    data = load_data(recipe.data.dataset, "train")
    load_before = os.getloadavg()[0]
    result = train(recipe, data, checkpoint_dir=out_dir / f"{name}.ckpt", resume=resume, monitor=EpochPrinter(name))
    bundle = save_trained_bundle(result, out_dir / name, data, name=f"mnist-cnn-{name}")
    info = {"epochs": result.metrics["epochs_run"], "train_seconds": result.metrics["seconds"],
            "train_cpu_seconds": result.metrics["cpu_seconds"],
            "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)], "events": result.events}
    return bundle, info


def ship_to_zoo(bundle: Path, figures: dict) -> None:
    """Copy a trained bundle into the zoo as mnist-cnn-robust, with its test figures in `training`."""
    loaded = load_model(str(bundle))
    meta = loaded.meta
    meta.name = "mnist-cnn-robust"
    meta.training = {**meta.training, "evaluation": figures}
    from bastion.models.bundle import save_bundle

    save_bundle(loaded.module, zoo_path("mnist-cnn-robust"), meta)
    print(f"shipped {bundle} as the zoo's mnist-cnn-robust", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", action="append", help="recipe name or path (repeatable)")
    parser.add_argument("--eval-only", action="append", default=[], help="evaluate an existing bundle")
    parser.add_argument("--epochs", type=int, help="override every recipe's epoch count")
    parser.add_argument("--n", type=int, default=1000, help="test images to evaluate (default: all 1,000)")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training and evaluation")
    parser.add_argument("--out", default="bench-out/train", help="where trained bundles go")
    parser.add_argument("--resume", action="store_true", help="resume interrupted trainings")
    parser.add_argument("--no-peer", action="store_true", help="skip the ART APGD-CE cross-check")
    parser.add_argument("--zoo", action="store_true", help="ship the most robust result as mnist-cnn-robust")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    test = load_data("mnist", "test").take(args.n)
    out_dir = Path(args.out)
    jobs: list[tuple[str, Path, dict]] = []
    for bundle in args.eval_only:
        jobs.append((Path(bundle).name, Path(bundle), {}))
    if not args.eval_only or args.recipe:
        for name in args.recipe or ROBUST_RECIPES:
            bundle, info = train_recipe(name, out_dir, args.epochs, args.resume)
            jobs.append((Path(name).stem, bundle, info))

    rows = {}
    for label, bundle, info in jobs:
        figures = standard_suite(bundle, test, args.eps, args.seed)
        if not args.no_peer:
            figures["art_apgd_ce"] = art_apgd_ce(load_model(str(bundle)).module, test.x, test.y, args.eps)
        rows[label] = {**info, **figures, "bundle": str(bundle)}
        print(f"  [{label}] evaluated: {json.dumps(figures)}", file=sys.stderr, flush=True)

    print(f"\nLinf eps {args.eps}, {len(test)} MNIST test images; worst case over the standard suite "
          f"(APGD-CE, APGD-T, FAB-T, Square 5,000); training on {args.threads} thread(s)")
    print(f"{'recipe':<12} {'epochs':>6} {'train s':>8} {'CPU s':>7} {'clean':>7} {'robust':>7} {'ART APGD-CE':>12}")
    for label, row in rows.items():
        peer = f"{row['art_apgd_ce']:.1%}" if "art_apgd_ce" in row else "-"
        print(f"{label:<12} {row.get('epochs', '-'):>6} {row.get('train_seconds', '-'):>8} "
              f"{row.get('train_cpu_seconds', '-'):>7} {row['clean']:>7.1%} {row['robust']:>7.2%} {peer:>12}")
    if args.zoo and rows:
        best = max(rows, key=lambda k: (rows[k]["clean"] >= 0.97, rows[k]["robust"]))
        ship_to_zoo(Path(rows[best]["bundle"]), {k: v for k, v in rows[best].items() if k != "bundle"}
                    | {"n": len(test), "eps": args.eps, "suite": "standard"})
    print(json.dumps({"benchmark": "train", "eps": args.eps, "n": len(test), "suite": "standard",
                      "threads": args.threads, "results": rows}))


if __name__ == "__main__":
    main()
