"""bastion's attacks against ART (and torchattacks, where installed) on the same model,
samples and parameters, in one run, with the floor measured in the same run.

    python benchmarks/attacks.py [--n 1000] [--repeats 2]
    .venv-bench/bin/python benchmarks/attacks.py          # adds torchattacks (see benchmarks/README.md)

The floor of an iterative gradient attack is ``steps x one forward+backward pass`` over
the samples it attacks (the correctly classified ones), timed right before each run.
bastion drops samples once they are misclassified, so it also reports the stricter
"active floor": the forward+backward cost of exactly the per-sample model evaluations
the attack made (its query count x the per-sample cost at full batch).

Every implementation runs once per repeat, interleaved, and the table shows medians.
Robust accuracy is re-measured here by predicting every returned adversarial with the
fp32 eager model, over all ``n`` samples (clean mistakes count as not robust). Prints a
table, then one JSON line.

bastion's PGD and APGD-CE also run on the model accelerated by each of ``--accelerations``
(``bastion+compile``, ``bastion+bf16``, ``bastion+channels-last`` rows: what ``bastion attack
--compile`` etc. run); their "x floor" is against the same fp32 eager floor, so below the plain
row's means faster. The one-time cost of each (the agreement check, and for compile the
compilation of the forward and gradient graphs) is printed apart as "setup".
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import defaultdict

import numpy as np
import torch

from bastion.attacks import get_attack
from bastion.data import load_data
from bastion.models import load_model
from bastion.models.acceleration import ORDER, Acceleration, accelerate
from bastion.threat import ThreatModel


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="test samples for PGD and APGD-CE")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--eps", type=float, default=0.1, help="Linf eps for PGD and APGD-CE")
    parser.add_argument("--n-cw", type=int, default=100, help="samples for CW-L2 (ART's is slow)")
    parser.add_argument("--n-square", type=int, default=200, help="samples for Square (ART's is slow)")
    parser.add_argument("--square-eps", type=float, default=0.3)
    parser.add_argument("--square-queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--model", default="mnist-cnn")
    parser.add_argument("--accelerations", default=",".join(ORDER),
                        help=f"comma-separated, each measured alone ({', '.join(ORDER)}); 'none' for none")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model).module
    data = load_data("mnist", "test").take(args.n)
    x, y = data.x, data.y
    peers = Peers(model, tuple(x.shape[1:]))
    pgd_steps, apgd_steps = 40, 100
    cw = dict(steps=20, binary_search_steps=2, lr=0.2, initial_const=2.0)  # a fast setting; see README
    # CW-L2 is a minimum-norm attack: its eps is the input box's diagonal, the largest a threat model takes.
    UNBOUNDED_L2 = math.sqrt(x[0].numel())  # noqa: N806

    xs_cw, ys_cw = x[:args.n_cw], y[:args.n_cw]
    xs_sq, ys_sq = x[:args.n_square], y[:args.n_square]
    jobs = {  # (group, implementation) -> (inputs, labels, run() -> (x_adv, queries or None))
        ("pgd", "bastion"): (x, y, lambda: bastion("pgd", "linf", args.eps, model, x, y, steps=pgd_steps)),
        ("pgd", "art"): (x, y, lambda: peers.art_pgd(x, y, args.eps, pgd_steps)),
        ("apgd-ce", "bastion"): (x, y, lambda: bastion("apgd-ce", "linf", args.eps, model, x, y, steps=apgd_steps)),
        ("apgd-ce", "art"): (x, y, lambda: peers.art_apgd(x, y, args.eps, apgd_steps)),
        ("cw-l2", "bastion"): (xs_cw, ys_cw, lambda: bastion("cw-l2", "l2", UNBOUNDED_L2, model, xs_cw, ys_cw, **cw)),
        ("cw-l2", "art"): (xs_cw, ys_cw, lambda: peers.art_cw(xs_cw, ys_cw)),
        ("square", "bastion"): (xs_sq, ys_sq, lambda: bastion("square", "linf", args.square_eps, model, xs_sq, ys_sq,
                                                              n_queries=args.square_queries)),
        ("square", "art"): (xs_sq, ys_sq, lambda: peers.art_square(xs_sq, ys_sq, args.square_eps,
                                                                   args.square_queries)),
    }
    setup = {}
    for name in [] if args.accelerations == "none" else args.accelerations.split(","):
        start = time.perf_counter()
        fast = accelerate(model, x, Acceleration.of([name]), batch_size=1000)
        setup[name] = time.perf_counter() - start
        impl = f"bastion+{name}"
        jobs |= {
            ("pgd", impl): (x, y, lambda fast=fast: bastion("pgd", "linf", args.eps, fast, x, y, steps=pgd_steps)),
            ("apgd-ce", impl): (x, y, lambda fast=fast: bastion("apgd-ce", "linf", args.eps, fast, x, y,
                                                                steps=apgd_steps)),
        }
    if peers.torchattacks is not None:
        jobs |= {
            ("pgd", "torchattacks"): (x, y, lambda: peers.ta_pgd(x, y, args.eps, pgd_steps)),
            ("apgd-ce", "torchattacks"): (x, y, lambda: peers.ta_apgd(x, y, args.eps, apgd_steps)),
            ("square", "torchattacks"): (xs_sq, ys_sq, lambda: peers.ta_square(xs_sq, ys_sq, args.square_eps,
                                                                               args.square_queries)),
        }

    correct = predict(model, x) == y
    times, outputs, fwd_bwd, floor_ratios = defaultdict(list), {}, [], defaultdict(list)
    steps_of = {"pgd": pgd_steps, "apgd-ce": apgd_steps}
    for repeat in range(args.repeats):
        for key, (inputs, labels, run) in jobs.items():
            # The floor is timed right before each run, so a swing in machine speed hits both alike.
            per_pass = time_forward_backward(model, x[correct], y[correct]) if key[0] in steps_of else None
            start = time.perf_counter()
            x_adv, queries = run()
            times[key].append(time.perf_counter() - start)
            outputs[key] = (inputs, labels, x_adv, queries)
            if per_pass is not None:
                fwd_bwd.append(per_pass)
                per_sample = per_pass / int(correct.sum())
                floor_ratios[key].append((times[key][-1] / (steps_of[key[0]] * per_pass),
                                          times[key][-1] / (queries * per_sample) if queries else None))
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)

    per_pass = statistics.median(fwd_bwd)  # one forward+backward over the correctly classified samples
    rows, ratios, robust = [], {}, {}
    for (group, impl), (inputs, labels, x_adv, queries) in outputs.items():
        seconds = statistics.median(times[(group, impl)])
        acc = (predict(model, x_adv) == labels).float().mean().item()
        robust[f"{group}:{impl}"] = round(acc, 4)
        row = {"attack": group, "impl": impl, "n": len(inputs), "seconds": seconds, "robust": acc, "floor": "",
               "active": "", "note": ""}
        if group in steps_of:  # medians over repeats of the ratio to the floor timed beside each run
            floor = statistics.median(r for r, _ in floor_ratios[(group, impl)])
            row["floor"] = f"{floor:.2f}x"
            ratios[f"{group}:{impl}/floor"] = round(floor, 3)
            if queries:
                active = statistics.median(a for _, a in floor_ratios[(group, impl)])
                row["active"] = f"{active:.2f}x"
                ratios[f"{group}:{impl}/active_floor"] = round(active, 3)
        if group == "cw-l2":
            l2, rate = median_l2(model, inputs, labels, x_adv)
            row["note"] = f"median L2 {l2:.3f}, success {rate:.0%}"
            robust[f"{group}:{impl}:median_l2"] = round(l2, 4)
        rows.append(row)
    for group in ("pgd", "apgd-ce", "cw-l2", "square"):
        for impl in ("art", "torchattacks", *(f"bastion+{name}" for name in setup)):
            if (group, impl) in times:
                ratios[f"{group}:{impl}_time/bastion_time"] = round(
                    statistics.median(times[(group, impl)]) / statistics.median(times[(group, "bastion")]), 2)
    ratios["cw-l2:bastion_median_l2/art_median_l2"] = round(
        robust["cw-l2:bastion:median_l2"] / robust["cw-l2:art:median_l2"], 3)

    print(f"\nmodel {args.model}; forward+backward over {int(correct.sum())} samples: {per_pass * 1e3:.1f} ms "
          f"(median of {args.repeats}); PGD-{pgd_steps} and APGD-CE-{apgd_steps} at Linf {args.eps}, CW-L2 {cw}, "
          f"Square Linf {args.square_eps} with {args.square_queries} queries")
    header = f"{'attack':<8} {'impl':<22} {'n':>5} {'time s':>8} {'x floor':>8} {'x active':>9} {'robust':>7}  note"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['attack']:<8} {r['impl']:<22} {r['n']:>5} {r['seconds']:>8.2f} {r['floor']:>8} {r['active']:>9} "
              f"{r['robust']:>7.1%}  {r['note']}")
    if peers.torchattacks is None:
        print(f"torchattacks skipped: {peers.torchattacks_note}")
    if setup:
        print("setup (agreement check; compile: both graphs) s: " + ", ".join(f"{k} {v:.1f}" for k, v in setup.items()))
    print(json.dumps({"ratios": ratios, "robust_accuracy": robust,
                      "setup_seconds": {k: round(v, 2) for k, v in setup.items()}}))


def bastion(name, norm, eps, model, x, y, **params):
    attack = get_attack(name)(ThreatModel(norm=norm, eps=eps), batch_size=1000, seed=0, **params)
    (result,) = attack.run(model, x, y)
    return result.x_adv, result.queries


def predict(model, x):
    with torch.no_grad():
        return torch.cat([model(chunk).argmax(1) for chunk in x.split(1000)])


def time_forward_backward(model, x, y, tries: int = 3) -> float:
    """Fastest of a few forward+backward passes of the cross-entropy w.r.t. the input."""
    best = float("inf")
    for _ in range(tries):
        xg = x.clone().requires_grad_(True)
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(xg), y, reduction="sum")
        torch.autograd.grad(loss, xg)
        best = min(best, time.perf_counter() - start)
    return best


def median_l2(model, x, y, x_adv) -> tuple[float, float]:
    """Median L2 over correctly classified samples, a failure counting as infinitely far; and the success rate."""
    correct = predict(model, x) == y
    fooled = predict(model, x_adv) != y
    l2 = (x_adv - x).flatten(1).norm(dim=1)
    l2[~fooled] = float("inf")
    return l2[correct].median().item(), fooled[correct].float().mean().item()


class Peers:
    """ART and torchattacks on the same model, with bastion's parameters translated to theirs."""

    def __init__(self, model, input_shape):
        from art.estimators.classification import PyTorchClassifier

        self.model = model
        self.classifier = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=input_shape,
                                            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
        try:
            import torchattacks
            self.torchattacks, self.torchattacks_note = torchattacks, ""
        except ImportError as exc:
            self.torchattacks, self.torchattacks_note = None, f"not importable here ({exc}); use .venv-bench"

    def _art(self, attack, x, y=None):
        np.random.seed(0)
        return torch.as_tensor(attack.generate(x.numpy(), y=None if y is None else y.numpy())), None

    def art_pgd(self, x, y, eps, steps):
        from art.attacks.evasion import ProjectedGradientDescent
        return self._art(ProjectedGradientDescent(self.classifier, norm=np.inf, eps=eps, eps_step=2.5 * eps / steps,
                                                  max_iter=steps, num_random_init=1, batch_size=1000,
                                                  verbose=False), x, y)

    def art_apgd(self, x, y, eps, steps):
        from art.attacks.evasion import AutoProjectedGradientDescent
        return self._art(AutoProjectedGradientDescent(self.classifier, norm=np.inf, eps=eps, eps_step=2 * eps,
                                                      max_iter=steps, nb_random_init=1, batch_size=1000,
                                                      loss_type="cross_entropy", verbose=False), x, y)

    def art_cw(self, x, y):
        from art.attacks.evasion import CarliniL2Method
        return self._art(CarliniL2Method(self.classifier, batch_size=len(x), verbose=False), x, y)  # its defaults

    def art_square(self, x, y, eps, queries):
        from art.attacks.evasion import SquareAttack
        return self._art(SquareAttack(self.classifier, norm=np.inf, eps=eps, max_iter=queries, p_init=0.8,
                                      nb_restarts=1, batch_size=len(x), verbose=False), x, y)

    def _ta(self, attack, x, y):
        torch.manual_seed(0)
        return attack(x, y).detach(), None

    def ta_pgd(self, x, y, eps, steps):
        return self._ta(self.torchattacks.PGD(self.model, eps=eps, alpha=2.5 * eps / steps, steps=steps,
                                              random_start=True), x, y)

    def ta_apgd(self, x, y, eps, steps):
        return self._ta(self.torchattacks.APGD(self.model, norm="Linf", eps=eps, steps=steps, n_restarts=1,
                                               loss="ce", rho=0.75, seed=0), x, y)

    def ta_square(self, x, y, eps, queries):
        return self._ta(self.torchattacks.Square(self.model, norm="Linf", eps=eps, n_queries=queries, n_restarts=1,
                                                 p_init=0.8, seed=0), x, y)


if __name__ == "__main__":
    main()
