"""bastion's standard suite vs ART's AutoAttack: same robust model, same samples, one run.

Three evaluations of the first N bundled MNIST test images at Linf eps 0.3:

  bastion           `bastion bench`'s engine with attacks/standard.toml: APGD-CE (100 steps),
                    APGD-T (9 targets x 100), FAB-T (9 targets x 100), Square (5,000 queries),
                    worst case per sample, plus the attack-failure indicators.
  art-default       art.attacks.evasion.AutoAttack with its default attacks: APGD-CE and
                    APGD-DLR (100 steps, 5 restarts each), DeepFool, Square (5,000 queries,
                    5 restarts).
  art-same-budget   ART's AutoAttack configured like the standard suite: APGD-CE (100 steps,
                    1 restart); APGD-DLR run targeted on 9 targets x 100 steps (ART's
                    AutoAttack with targeted=True, which also makes one untargeted pass first);
                    Square (5,000 queries, 1 restart). ART has no FAB. Each stage attacks only
                    the samples every earlier stage failed to break.

Every adversarial ART returns is re-checked here (inside the eps ball, misclassified). Targets:
bastion's robust accuracy <= each ART figure, and bastion at least 10x faster.

Each run's model evaluations are counted (samples through the model without and with an input
gradient) and priced at the per-sample cost timed at the start: the run's compute floor, the
time those evaluations take with no other work. A robust sample survives every attack, so it
uses each attack's whole budget (Square alone: 5,000 forward passes); time ÷ floor is then the
implementation's overhead, and ART's time ÷ bastion's floor is the most any implementation of
the same budgets could gain over ART on this model. Times are wall
and CPU seconds of this one-thread process; on a shared machine the CPU time is the steadier
figure, and the ratios are computed on both. ART's Square is slow on CPU (its default makes 5
restarts of 5,000 queries), so N defaults to 20: about 11 CPU-minutes for the whole run.

    python benchmarks/bench_vs_art.py [--n 20] [--model mnist-cnn-robust] [--skip-default]

The last line printed is one JSON object: {"ratios": {...}, "robust_accuracy": {...}, ...}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np
import torch

from bastion.attacks.base import predict
from bastion.data import load_data
from bastion.evaluation import benchmark, load_suite
from bastion.models import load_model
from bastion.models.zoo import zoo_path

EPS = 0.3


class Clock:
    """Wall and CPU seconds of a block. On a shared machine the CPU time of this one-thread
    process is the steadier measure (wall time includes waiting for the other jobs)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def fields(self) -> dict:
        return {"seconds": self.wall, "cpu_seconds": self.cpu}


class ModelCalls:
    """Counts the samples every run pushes through the model: plain forward passes, and forward
    passes whose input requires a gradient (each followed by a backward pass). Times a batch of
    each, so every run also gets its compute floor: the seconds those evaluations cost with no
    overhead at all. The floor shows what no implementation can beat at a given query budget."""

    def __init__(self, module, x: torch.Tensor) -> None:
        self.plain = self.gradient = 0
        # Hook the first layer: ART's wrapper runs an nn.Sequential layer by layer, so the outer
        # module's own forward never runs under ART.
        first_layer = next(m for m in module.modules() if not list(m.children()))
        first_layer.register_forward_hook(self._count)
        self.fwd, self.fwd_bwd = self._time_per_sample(module, x)
        self.plain = self.gradient = 0

    def _count(self, module, inputs, output) -> None:
        if inputs[0].requires_grad:
            self.gradient += len(inputs[0])
        else:
            self.plain += len(inputs[0])

    @staticmethod
    def _time_per_sample(module, x: torch.Tensor) -> tuple[float, float]:
        def forward():
            with torch.no_grad():
                module(x)

        def forward_backward():
            xg = x.clone().requires_grad_(True)
            torch.autograd.grad(module(xg).sum(), xg)

        times = []
        for fn in (forward, forward_backward):
            for _ in range(5):
                fn()
            runs = []
            for _ in range(7):
                start = time.process_time()
                for _ in range(20):
                    fn()
                runs.append((time.process_time() - start) / 20 / len(x))
            times.append(sorted(runs)[3])
        return times[0], times[1]

    def take(self) -> dict:
        """The counts since the last take, and their compute floor in seconds."""
        counts = {"forward_samples": self.plain, "gradient_samples": self.gradient,
                  "floor_seconds": self.plain * self.fwd + self.gradient * self.fwd_bwd}
        self.plain = self.gradient = 0
        return counts


def bastion_run(model, data, seed: int, calls: ModelCalls) -> dict:
    with Clock() as clock:
        report = benchmark(model, data, load_suite("standard"), seed=seed)
    return {"robust_accuracy": report["summary"]["robust_accuracy"], **clock.fields(), **calls.take(),
            "clean_accuracy": report["summary"]["clean_accuracy"],
            "indicators_fired": report["summary"]["indicators_fired"],
            "per_attack": {a["attack"]: a["broken_first"] for a in report["results"][0]["attacks"]}}


def art_classifier(module):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=module, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                             nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")


def robust_after(module, x: np.ndarray, y: np.ndarray, x_adv: np.ndarray, robust: np.ndarray) -> np.ndarray:
    """Re-check ART's output: a sample stays robust unless its adversarial is in the ball and misclassified."""
    inside = np.abs(x_adv - x).reshape(len(x), -1).max(axis=1) <= EPS + 1e-5
    in_bounds = (x_adv >= -1e-6).reshape(len(x), -1).all(1) & (x_adv <= 1 + 1e-6).reshape(len(x), -1).all(1)
    pred = predict(module, torch.from_numpy(x_adv).float()).numpy()
    return robust & ~(inside & in_bounds & (pred != y))


def art_default(module, x: np.ndarray, y: np.ndarray, n: int, calls: ModelCalls) -> dict:
    from art.attacks.evasion import AutoAttack

    classifier = art_classifier(module)
    robust = predict(module, torch.from_numpy(x)).numpy() == y
    with Clock() as clock:
        attack = AutoAttack(estimator=classifier, norm=np.inf, eps=EPS, batch_size=n)
        x_adv = attack.generate(x=x, y=y)
    counts = calls.take()
    robust = robust_after(module, x, y, x_adv, robust)
    return {"robust_accuracy": float(robust.mean()), **clock.fields(), **counts}


def art_same_budget(module, x: np.ndarray, y: np.ndarray, n: int, calls: ModelCalls) -> dict:
    from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack

    classifier = art_classifier(module)

    def apgd(loss):  # eps_step = eps gives APGD's initial step 2 * eps, as in AutoAttack
        return AutoProjectedGradientDescent(estimator=classifier, norm=np.inf, eps=EPS, eps_step=EPS, max_iter=100,
                                            nb_random_init=1, batch_size=n, loss_type=loss, verbose=False)

    stages = [
        ("apgd-ce", AutoAttack(classifier, norm=np.inf, eps=EPS, eps_step=EPS, batch_size=n,
                               attacks=[apgd("cross_entropy")])),
        ("apgd-t", AutoAttack(classifier, norm=np.inf, eps=EPS, eps_step=EPS, batch_size=n, targeted=True,
                              attacks=[apgd("difference_logits_ratio")])),
        ("square", AutoAttack(classifier, norm=np.inf, eps=EPS, batch_size=n, attacks=[
            SquareAttack(estimator=classifier, norm=np.inf, eps=EPS, max_iter=5000, p_init=0.8, nb_restarts=1,
                         batch_size=n, verbose=False)])),
    ]
    robust = predict(module, torch.from_numpy(x)).numpy() == y
    per_stage, wall, cpu = {}, 0.0, 0.0
    calls.take()  # the clean prediction above is not part of the attack
    counts = {"forward_samples": 0, "gradient_samples": 0, "floor_seconds": 0.0}
    for name, attack in stages:
        todo = np.flatnonzero(robust)
        if len(todo) == 0:
            break
        with Clock() as clock:
            x_adv = attack.generate(x=x[todo], y=y[todo])
        wall, cpu = wall + clock.wall, cpu + clock.cpu
        stage = calls.take()
        counts = {key: counts[key] + stage[key] for key in counts}
        still = robust_after(module, x[todo], y[todo], x_adv, np.ones(len(todo), dtype=bool))
        calls.take()  # nor is the re-check
        per_stage[name] = int((~still).sum())
        robust[todo[~still]] = False
    return {"robust_accuracy": float(robust.mean()), "seconds": wall, "cpu_seconds": cpu, **counts,
            "per_attack": per_stage}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20, help="number of test samples (ART's Square is slow)")
    parser.add_argument("--model", default=None, help="default: mnist-cnn-robust if installed, else mnist-cnn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-default", action="store_true", help="skip ART's default AutoAttack (slowest)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("art").setLevel(logging.ERROR)
    model_name = args.model or ("mnist-cnn-robust" if (zoo_path("mnist-cnn-robust") / "bastion.toml").is_file()
                                else "mnist-cnn")
    model = load_model(model_name)
    data = load_data("mnist").take(args.n)
    x, y = data.x.numpy(), data.y.numpy()
    print(f"model {model_name}, {args.n} MNIST test samples, Linf eps {EPS}, 1 thread, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    calls = ModelCalls(model.module, data.x)
    print(f"  one sample through the model (batch {args.n}): forward {calls.fwd * 1e3:.3f} ms, "
          f"forward + backward {calls.fwd_bwd * 1e3:.3f} ms", flush=True)
    results = {}
    results["bastion"] = bastion_run(model, data, args.seed, calls)
    print(f"  bastion done: {results['bastion']}", flush=True)
    results["art-same-budget"] = art_same_budget(model.module, x, y, args.n, calls)
    print(f"  art-same-budget done: {results['art-same-budget']}", flush=True)
    if not args.skip_default:
        results["art-default"] = art_default(model.module, x, y, args.n, calls)
        print(f"  art-default done: {results['art-default']}", flush=True)

    print(f"\n{'run':<18}{'robust acc':>11}{'wall s':>9}{'cpu s':>9}{'wall / bastion':>16}{'cpu / bastion':>15}"
          f"{'forwards':>10}{'gradients':>11}{'floor s':>9}{'cpu / floor':>13}")
    base = results["bastion"]
    for name, r in results.items():
        print(f"{name:<18}{r['robust_accuracy']:>11.2%}{r['seconds']:>9.1f}{r['cpu_seconds']:>9.1f}"
              f"{r['seconds'] / base['seconds']:>15.1f}x{r['cpu_seconds'] / base['cpu_seconds']:>14.1f}x"
              f"{r['forward_samples']:>10}{r['gradient_samples']:>11}{r['floor_seconds']:>9.1f}"
              f"{r['cpu_seconds'] / r['floor_seconds']:>12.2f}x")
    print("forwards / gradients: samples through the model without / with an input gradient; floor: what "
          "those evaluations cost at the timed per-sample rates, with no other work")
    ratios = {}
    for name, r in results.items():
        if name != "bastion":
            ratios[f"{name}_wall_over_bastion"] = round(r["seconds"] / base["seconds"], 2)
            ratios[f"{name}_cpu_over_bastion"] = round(r["cpu_seconds"] / base["cpu_seconds"], 2)
    accuracy = {name: r["robust_accuracy"] for name, r in results.items()}
    ok = all(base["robust_accuracy"] <= a for a in accuracy.values()) and all(
        v >= 10 for k, v in ratios.items() if k.endswith("cpu_over_bastion"))
    print(json.dumps({"ratios": ratios, "robust_accuracy": accuracy,
                      "seconds": {name: round(r["seconds"], 2) for name, r in results.items()},
                      "cpu_seconds": {name: round(r["cpu_seconds"], 2) for name, r in results.items()},
                      "floor_seconds": {name: round(r["floor_seconds"], 2) for name, r in results.items()},
                      "model": model_name, "n": args.n, "eps": EPS, "targets_met": ok}))


if __name__ == "__main__":
    main()
