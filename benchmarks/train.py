"""Adversarial training figures: train each recipe, then evaluate it with the strongest attacks available.

    python benchmarks/train.py                          # the robust recipes, full settings
    python benchmarks/train.py --recipe fgsm-rs --recipe trades
    python benchmarks/train.py --eval-only path/to/bundle [--eval-only ...]
    python benchmarks/train.py --recipe trades --zoo    # also ship the result as the zoo's mnist-cnn-robust

Training runs on one thread (the machine is shared); the table reports wall and CPU time and the
load average while training. Evaluation is per sample and worst case: each attack runs on the test
images every earlier attack failed to break (APGD-CE, APGD-DLR, APGD-T and Square where bastion has
them, PGD with restarts always). The peer column re-attacks the same model with ART's APGD-CE, an
independent implementation, so a figure cannot come from a weakness of bastion's own attacks.
The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from bastion.attacks import ATTACKS
from bastion.attacks.base import predict
from bastion.catalog import resolve
from bastion.data import load_data
from bastion.defenses.training import load_recipe, save_trained_bundle, train
from bastion.defenses.training.trainer import TrainingMonitor
from bastion.models import load_model
from bastion.models.zoo import zoo_path
from bastion.threat import ThreatModel

ROBUST_RECIPES = ["fgsm-rs", "pgd-at", "trades", "mart"]


def strongest_attacks(eps: float, square_queries: int, targets: int = 9) -> list[tuple[str, dict]]:
    """(registry name, parameters): the AutoAttack components bastion has, then PGD with restarts."""
    wanted = [("apgd-ce", {"steps": 100}), ("apgd-t", {"steps": 100, "n_target_classes": targets}),
              ("apgd-dlr", {"steps": 100}), ("square", {"n_queries": square_queries})]
    chosen = [(name, params) for name, params in wanted if name in ATTACKS]
    chosen.append(("pgd", {"steps": 100, "restarts": 1, "step_size": eps / 30}))
    return chosen


def worst_case(model, x, y, eps: float, square_queries: int, targets: int, seed: int) -> dict:
    """Clean accuracy, per-attack breaks and the worst-case robust accuracy over all attacks."""
    threat = ThreatModel(norm="linf", eps=eps)
    standing = predict(model, x) == y
    clean = standing.float().mean().item()
    per_attack = {}
    for name, params in strongest_attacks(eps, square_queries, targets):
        idx = standing.nonzero().flatten()
        if len(idx) == 0:  # nothing left to break
            per_attack[name] = {"broke": 0, "seconds": 0.0}
            continue
        start = time.perf_counter()
        attack = ATTACKS[name](threat, seed=seed, **params)
        result = attack.run(model, x[idx], y[idx])[0]
        # Re-check every adversarial here: inside the ball, inside the bounds, misclassified.
        x_adv = result.x_adv
        assert (x_adv - x[idx]).abs().amax().item() <= eps + 1e-5 and x_adv.min() >= 0 and x_adv.max() <= 1
        broken = predict(model, x_adv) != y[idx]
        standing[idx[broken]] = False
        per_attack[name] = {"broke": int(broken.sum()), "seconds": round(time.perf_counter() - start, 1)}
        print(f"    {name}: broke {int(broken.sum())}, robust now {standing.float().mean().item():.1%} "
              f"({per_attack[name]['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return {"clean": clean, "robust": standing.float().mean().item(), "attacks": per_attack}


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
                f"held-out clean {record.get('holdout_clean', 0):.1%} PGD {record.get('holdout_robust', 0):.1%} "
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
    parser.add_argument("--square-queries", type=int, default=5000)
    parser.add_argument("--targets", type=int, default=9, help="APGD-T target classes (AutoAttack: 9)")
    parser.add_argument("--out", default="bench-out/train", help="where trained bundles go")
    parser.add_argument("--resume", action="store_true", help="resume interrupted trainings")
    parser.add_argument("--no-peer", action="store_true", help="skip the ART APGD-CE cross-check")
    parser.add_argument("--zoo", action="store_true", help="ship the most robust result as mnist-cnn-robust")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

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
        model = load_model(str(bundle)).module
        figures = worst_case(model, test.x, test.y, args.eps, args.square_queries, args.targets, args.seed)
        if not args.no_peer:
            figures["art_apgd_ce"] = art_apgd_ce(model, test.x, test.y, args.eps)
        rows[label] = {**info, **figures, "bundle": str(bundle)}
        print(f"  [{label}] evaluated: {json.dumps(figures)}", file=sys.stderr, flush=True)

    attack_names = [f"{name}({', '.join(f'{k}={v:g}' for k, v in params.items())})"
                    for name, params in strongest_attacks(args.eps, args.square_queries, args.targets)]
    print(f"\nLinf eps {args.eps}, {len(test)} MNIST test images; worst case over {', '.join(attack_names)}")
    print(f"{'recipe':<12} {'epochs':>6} {'train s':>8} {'CPU s':>7} {'clean':>7} {'robust':>7} {'ART APGD-CE':>12}")
    for label, row in rows.items():
        peer = f"{row['art_apgd_ce']:.1%}" if "art_apgd_ce" in row else "-"
        print(f"{label:<12} {row.get('epochs', '-'):>6} {row.get('train_seconds', '-'):>8} "
              f"{row.get('train_cpu_seconds', '-'):>7} {row['clean']:>7.1%} {row['robust']:>7.1%} {peer:>12}")
    if args.zoo and rows:
        best = max(rows, key=lambda k: (rows[k]["clean"] >= 0.97, rows[k]["robust"]))
        ship_to_zoo(Path(rows[best]["bundle"]), {k: v for k, v in rows[best].items() if k != "bundle"}
                    | {"n": len(test), "eps": args.eps, "attacks": rows[best]["attacks"]})
    print(json.dumps({"benchmark": "train", "eps": args.eps, "n": len(test), "attacks": attack_names,
                      "results": rows}))


if __name__ == "__main__":
    main()
