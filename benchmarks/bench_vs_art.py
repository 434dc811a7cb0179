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

--fast: the fast suite against the standard suite and ART (issue 13). On each model of
--models, in one run: the standard suite (adaptive order), the fast suite (attacks/fast.toml)
and ART's AutoAttack (same budgets, and its defaults unless --skip-default; --skip-art skips
both); on each model of --masked also the standard suite in the order the suite declares
(the fixed order of earlier versions). A model is a model reference, or a wrapper of one:
round:M (torch.round of the input: zero gradients, no BPDA; a binarisation that also makes
MNIST robust), quantize:M (8-bit quantisation: zero gradients, no robustness), x1000:M (logits times 1,000:
cross-entropy saturates), softmax:M (probabilities instead of logits). It prints a table (robust
accuracy, the samples the fast suite and the standard suite disagree on, CPU seconds, model
evaluations, compute floor, ratios) and a final JSON line {"ratios": {...}, "targets": {...}, ...}:

    python benchmarks/bench_vs_art.py --fast --n 1000 --skip-default \
        --models mnist-cnn,mnist-cnn-robust,mnist-cnn-gaussian,mnist-fast,x1000:mnist-cnn-robust,softmax:mnist-cnn-robust \
        --masked round:mnist-cnn
    python benchmarks/bench_vs_art.py --fast --n 10     # smoke run of the whole pipeline
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


class Rounded(torch.nn.Module):
    """torch.round of the input before the model: gradients are zero everywhere (masked), no BPDA."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x))


class Quantized(torch.nn.Module):
    """8-bit quantisation of the input (round(255 x) / 255): zero gradients almost everywhere, yet no
    robustness at all, the gradient-masking case where an attack order that trusts gradients wastes
    the most (binarising with torch.round, by contrast, is a real defense of MNIST at eps 0.3)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 255) / 255)


class Scaled(torch.nn.Module):
    """Logits times 1,000: cross-entropy (and its gradient) saturates on every confident sample."""

    def __init__(self, inner, scale: float = 1000.0):
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x):
        return self.inner(x) * self.scale


class Softmaxed(torch.nn.Module):
    """Probabilities instead of logits: every margin saturates near 0 or 1."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.softmax(self.inner(x), dim=1)


WRAPPERS = {"round": Rounded, "quantize": Quantized, "x1000": Scaled, "softmax": Softmaxed}


def load_reference(ref: str):
    """A model reference, or WRAPPER:reference (see --fast in the module docstring)."""
    from bastion.models.loaded import LoadedModel

    wrapper, _, inner = ref.partition(":") if ref.split(":", 1)[0] in WRAPPERS else ("", "", ref)
    model = load_model(inner)
    if not wrapper:
        return model
    return LoadedModel(module=WRAPPERS[wrapper](model.module).eval(), name=ref, input_shape=model.input_shape,
                       num_classes=model.num_classes, bounds=model.bounds, source=ref)


def suite_run(model, data, suite_name: str, seed: int, calls: ModelCalls, *, fixed_order: bool = False) -> dict:
    """One bastion suite on ``model``: the report's figures, the robust samples, counts and floor."""
    from bastion.evaluation import BenchInputs, run_suite
    from bastion.evaluation.report import build_report
    from bastion.evaluation.state import Order

    suite = load_suite(suite_name)
    order = Order(tuple(a.label for a in suite.attacks), adapted=False,
                  reason="The order the suite declares (forced).") if fixed_order else None
    inputs = BenchInputs(model.module, data.x, data.y, tuple(data.bounds), 10)
    calls.take()  # the digests above are not part of the run
    with Clock() as clock:
        state = run_suite(inputs, suite, seed=seed, order=order)
    counts = calls.take()
    report = build_report(state, suite, data.y, 10, run={"model": {"name": model.name}, "data": {"name": "mnist"}})
    result = report["results"][-1]
    return {"robust_accuracy": result["robust_accuracy"], **clock.fields(), **counts,
            "robust": set(result["robust_indices"]), "order": [u.attack for u in state.units],
            "order_adapted": report["order"]["adapted"],
            "indicators_fired": report["summary"]["indicators_fired"],
            "per_attack": {a["attack"]: a["broken_first"] for a in result["attacks"]}}


def fast_mode(args) -> None:
    """The fast suite vs the standard suite vs ART (see the module docstring)."""
    data = load_data("mnist").take(args.n)
    x, y = data.x.numpy(), data.y.numpy()
    models = [m for m in args.models.split(",") if m] + [m for m in args.masked.split(",") if m]
    print(f"fast vs standard vs ART: {args.n} MNIST test samples, Linf eps {EPS}, 1 thread, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    table, ratios, targets, accuracy, disagreements = [], {}, {}, {}, {}
    for ref in models:
        model = load_reference(ref)
        calls = ModelCalls(model.module, data.x)
        runs = {"standard": suite_run(model, data, "standard", args.seed, calls)}
        if ref in args.masked.split(","):
            runs["standard-fixed-order"] = suite_run(model, data, "standard", args.seed, calls, fixed_order=True)
        runs["fast"] = suite_run(model, data, "fast", args.seed, calls)
        if not args.skip_art:
            runs["art-same-budget"] = art_same_budget(model.module, x, y, args.n, calls)
            if not args.skip_default:
                runs["art-default"] = art_default(model.module, x, y, args.n, calls)
        for name, r in runs.items():
            print(f"  {ref} {name} done: robust {r['robust_accuracy']:.2%}, cpu {r['cpu_seconds']:.1f} s, "
                  f"floor {r['floor_seconds']:.1f} s", flush=True)
        std, fast = runs["standard"], runs["fast"]
        misses, extra = sorted(fast["robust"] - std["robust"]), sorted(std["robust"] - fast["robust"])
        disagreements[ref] = {"fast_robust_standard_broke": misses, "standard_robust_fast_broke": extra}
        accuracy[ref] = {name: r["robust_accuracy"] for name, r in runs.items()}
        ratios[f"{ref}:standard_cpu_over_floor"] = round(std["cpu_seconds"] / std["floor_seconds"], 3)
        ratios[f"{ref}:standard_floor_over_fast_floor"] = round(std["floor_seconds"] / fast["floor_seconds"], 2)
        ratios[f"{ref}:standard_cpu_over_fast_cpu"] = round(std["cpu_seconds"] / fast["cpu_seconds"], 2)
        targets[f"{ref}:fast_within_0.3_points_of_standard"] = (
            fast["robust_accuracy"] <= std["robust_accuracy"] + 0.003 + 1e-9)
        targets[f"{ref}:fast_at_most_a_fifth_of_standard_compute"] = fast["floor_seconds"] * 5 <= std["floor_seconds"]
        if "art-default" in runs:
            art = runs["art-default"]
            ratios[f"{ref}:art_default_cpu_over_fast_cpu"] = round(art["cpu_seconds"] / fast["cpu_seconds"], 2)
            targets[f"{ref}:fast_20x_less_cpu_than_art_default"] = art["cpu_seconds"] >= 20 * fast["cpu_seconds"]
            targets[f"{ref}:fast_no_higher_than_art_default"] = fast["robust_accuracy"] <= art["robust_accuracy"]
        if "standard-fixed-order" in runs:
            fixed = runs["standard-fixed-order"]
            ratios[f"{ref}:fixed_order_cpu_over_adapted"] = round(fixed["cpu_seconds"] / std["cpu_seconds"], 2)
            targets[f"{ref}:adapted_order_5x_faster"] = fixed["cpu_seconds"] >= 5 * std["cpu_seconds"]
            targets[f"{ref}:adapted_order_same_worst_case"] = fixed["robust"] == std["robust"]
        else:
            targets[f"{ref}:standard_within_1.05x_floor"] = std["cpu_seconds"] <= 1.05 * std["floor_seconds"]
        for name, r in runs.items():
            table.append((ref, name, r, std))

    print(f"\n{'model':<28}{'run':<22}{'robust':>8}{'fast-only robust':>18}{'cpu s':>9}{'forwards':>11}"
          f"{'gradients':>11}{'floor s':>9}{'cpu/floor':>11}{'floor/std floor':>17}{'cpu/std cpu':>13}")
    for ref, name, r, std in table:
        only = len(disagreements[ref]["fast_robust_standard_broke"]) if name == "fast" else ""
        print(f"{ref:<28}{name:<22}{r['robust_accuracy']:>8.2%}{only!s:>18}{r['cpu_seconds']:>9.1f}"
              f"{r['forward_samples']:>11}{r['gradient_samples']:>11}{r['floor_seconds']:>9.1f}"
              f"{r['cpu_seconds'] / max(r['floor_seconds'], 1e-9):>10.2f}x"
              f"{r['floor_seconds'] / max(std['floor_seconds'], 1e-9):>16.3f}x"
              f"{r['cpu_seconds'] / max(std['cpu_seconds'], 1e-9):>12.3f}x")
    print("fast-only robust: samples the fast suite left robust that the standard suite broke (listed in the JSON); "
          "floor: the run's model evaluations priced at the per-sample costs timed beside it")
    for ref, d in disagreements.items():
        print(f"  {ref}: fast robust / standard broke {d['fast_robust_standard_broke']}; "
              f"standard robust / fast broke {d['standard_robust_fast_broke']}")
    print(json.dumps({"ratios": ratios, "targets": targets, "targets_met": all(targets.values()),
                      "robust_accuracy": accuracy, "disagreements": disagreements, "n": args.n, "eps": EPS}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20, help="number of test samples (ART's Square is slow)")
    parser.add_argument("--model", default=None, help="default: mnist-cnn-robust if installed, else mnist-cnn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-default", action="store_true", help="skip ART's default AutoAttack (slowest)")
    parser.add_argument("--fast", action="store_true", help="the fast suite vs the standard suite vs ART")
    parser.add_argument("--models", default="mnist-cnn-robust,mnist-cnn,x1000:mnist-cnn-robust",
                        help="--fast: comma-separated models (references or WRAPPER:reference)")
    parser.add_argument("--masked", default="round:mnist-cnn",
                        help="--fast: models also run in the standard suite's fixed order")
    parser.add_argument("--skip-art", action="store_true", help="--fast: no ART runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("art").setLevel(logging.ERROR)
    if args.fast:
        fast_mode(args)
        return
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
