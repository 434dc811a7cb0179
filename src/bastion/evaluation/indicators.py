"""Indicators of attack failure: signs that a low success rate is the attack's fault, not robustness.

After Carlini et al. 2019 ("On Evaluating Adversarial Robustness") and Pintor et
al. 2022 ("Indicators of Attack Failure"). Each indicator is a flag with a plain
explanation and what to do. They reuse the suite's results where they can and
otherwise probe a few dozen samples, so they cost little next to the suite.
"""

from __future__ import annotations

import torch

from bastion.attacks.pgd import PGD
from bastion.attacks.toolbox import ascent_step, margin, random_in_ball
from bastion.evaluation.inputs import BenchInputs
from bastion.evaluation.state import Indicator, RunState
from bastion.evaluation.suite import Suite
from bastion.threat import ThreatModel

PROBE_SAMPLES = 32
ASCENT_STEPS = 20
UNBOUNDED_STEPS = 50
REPEATS = 5
#: Fraction of probe samples with zero gradient (or no loss increase) that raises the flag.
ZERO_GRADIENT_FRACTION = 0.1
NO_PROGRESS_FRACTION = 0.5
#: An unbounded attack should fool (almost) everything.
UNBOUNDED_SUCCESS = 0.95
#: A white-box loss trace counts as still rising if its last tenth gained this share of its range.
TAIL_RISE = 0.05
#: Share of the samples left by the white-box attacks that the black-box ones may break before
#: the flag goes up: AutoAttack's Square finds the odd extra sample on sound robust models (1 of
#: 899 on the zoo's mnist-cnn-robust), while masked gradients leave it whole percents.
BLACK_BOX_TOLERANCE = 0.005


TEXT = {
    "gradients": ("Gradients zero, NaN or unavailable",
                  "Gradient attacks follow the input gradient; without a usable one they stall and the model "
                  "only looks robust (gradient masking, e.g. a non-differentiable preprocessing step).",
                  "Attack the model through a differentiable approximation (BPDA), or rely on the black-box "
                  "attacks (square) and transfer attacks."),
    "unstable-predictions": ("Predictions unstable across repeated forward passes",
                             "The model is randomized: one forward pass is a noisy gradient and a noisy verdict, "
                             "so attacks under-estimate what an adversary averaging many passes can do.",
                             "Use Expectation over Transformation (average gradients over many passes) and report "
                             "accuracy over repeated predictions."),
    "loss-not-increasing": ("Loss never increased",
                            "A gradient-ascent probe failed to raise the margin loss on most samples: the gradient "
                            "points the wrong way or carries no signal, so gradient attacks cannot make progress.",
                            "Check the model for gradient obfuscation (clipped, shattered or reversed gradients); "
                            "use BPDA, a surrogate model, or black-box attacks."),
    "loss-still-rising": ("Loss still rising at the last step",
                          "A white-box attack's loss was still going up when its step budget ran out: the "
                          "optimisation is incomplete and more steps would likely break more samples.",
                          "Raise the attack's steps (and restarts) in the suite until the loss plateaus."),
    "black-box-beats-white-box": ("Black-box attack broke samples the white-box attacks could not",
                                  "A score-only attack should be weaker than gradient attacks; when it wins, the "
                                  "gradients are misleading (gradient masking).",
                                  "Treat the white-box numbers as unreliable; find and remove the masking, or "
                                  "adapt the attack (BPDA, EOT, other losses)."),
    "accuracy-rises-with-eps": ("Robust accuracy rises with eps",
                                "A larger eps ball contains the smaller one, so accuracy can only fall as eps "
                                "grows; a rise means the attack failed at the larger eps.",
                                "Use more steps or restarts; the reported curve already counts every sample broken "
                                "at a smaller eps as broken at the larger ones."),
    "unbounded-attack-fails": ("Unbounded attack does not reach ~100% success",
                               "With eps covering the whole input range any input can become any other, so a "
                               "working attack fools every sample; failing means the attack, not the model, is "
                               "the limit.",
                               "Look for gradient masking or a broken loss; do not trust the bounded results "
                               "until this reaches ~100%."),
    "unconfirmed-claims": ("Attack successes that did not re-check",
                           "An attack reported samples as fooled that the model classifies correctly (or that lie "
                           "outside the eps ball) when re-checked; those were not counted.",
                           "Usually a randomized model or a bug in a custom attack; rerun with EOT or fix the "
                           "attack."),
}


#: The indicators of the gradient probe, which the runner may run before the attacks to order them.
PROBE_KEYS = ("gradients", "loss-not-increasing")


def run_indicators(inputs: BenchInputs, suite: Suite, state: RunState, *, seed: int = 0) -> list[Indicator]:
    """Every indicator, on the benchmark's model, samples and results (the gradient probe's
    verdicts taken from the run's order where the runner probed before the attacks)."""
    model = inputs.model
    xp, yp, threat = _probe_samples(inputs, suite, state.clean_correct)
    probed = {i.key: i for i in state.order.probe} if state.order is not None else {}
    gradients, loss_increase = probed.get("gradients"), probed.get("loss-not-increasing")
    return [
        gradients or check_gradients(model, xp, yp, threat, seed),
        check_stability(model, xp),
        loss_increase or check_loss_increase(model, xp, yp, threat),
        check_tail_rise(state),
        check_black_box(state, suite),
        check_eps_monotonic(state),
        check_unbounded(model, xp, yp, threat, seed),
        check_unconfirmed(state),
    ]


def gradient_probe(inputs: BenchInputs, suite: Suite, clean_correct: tuple[int, ...], *,
                   seed: int = 0) -> list[Indicator]:
    """The cheap gradient probe: the gradients and loss-not-increasing checks on the probe samples
    (a few dozen gradients each), the same verdicts :func:`run_indicators` reports."""
    xp, yp, threat = _probe_samples(inputs, suite, clean_correct)
    return [check_gradients(inputs.model, xp, yp, threat, seed), check_loss_increase(inputs.model, xp, yp, threat)]


def _probe_samples(inputs: BenchInputs, suite: Suite, clean_correct: tuple[int, ...]):
    """The first correctly classified samples, and the threat model at the suite's largest eps."""
    probe = inputs.positions(list(clean_correct[:PROBE_SAMPLES]))
    threat = ThreatModel(norm=suite.norm, eps=suite.epsilons[-1], bounds=inputs.bounds)
    return inputs.x[probe], inputs.y[probe], threat


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Best other logit minus the true logit: positive exactly when the sample is misclassified.

    Unlike cross-entropy it does not saturate on confident predictions, so a zero
    gradient here means the model itself gives none.
    """
    return -margin(logits, y)


def input_gradient(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(margin loss, its gradient w.r.t. x); raises RuntimeError when the model gives no gradient."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = margin_loss(model(x), y)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad.detach()


def check_gradients(model, x, y, threat: ThreatModel, seed: int) -> Indicator:
    if len(x) == 0:
        return _make("gradients", "skipped", "No correctly classified sample to probe.")
    generator = torch.Generator(device=x.device).manual_seed(seed)
    noise = random_in_ball(x, threat.norm, threat.single, generator)
    points = {"clean": x, "random point in the eps ball": threat.project(x, x + noise)}
    zero, nan = {}, {}
    for where, xs in points.items():
        try:
            _, grad = input_gradient(model, xs, y)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0][:160]
            return _make("gradients", "fired", f"No input gradient could be computed ({reason}).")
        flat = grad.flatten(1)
        nan[where] = int((~torch.isfinite(flat)).any(dim=1).sum())
        zero[where] = int((flat.abs().amax(dim=1) == 0).sum())
    details = {"probe_samples": len(x), "zero_gradient": zero, "nan_gradient": nan}
    worst_zero = max(zero.values()) / len(x)
    if any(nan.values()) or worst_zero >= ZERO_GRADIENT_FRACTION:
        return _make("gradients", "fired", f"Of {len(x)} probe samples, {max(nan.values())} had NaN/Inf and "
                     f"{max(zero.values())} had all-zero input gradients of the margin loss.", details)
    return _make("gradients", "ok", f"Input gradients were finite and non-zero on {len(x)} probe samples.", details)


def check_stability(model, x) -> Indicator:
    if len(x) == 0:
        return _make("unstable-predictions", "skipped", "No sample to probe.")
    with torch.no_grad():
        outputs = [model(x) for _ in range(REPEATS)]
    flips = sum(int((out.argmax(1) != outputs[0].argmax(1)).sum()) for out in outputs[1:])
    scale = outputs[0].abs().max().clamp_min(1e-12)
    spread = max(float((out - outputs[0]).abs().max() / scale) for out in outputs[1:])
    details = {"repeats": REPEATS, "prediction_changes": flips, "relative_logit_spread": spread}
    if flips or spread > 1e-4:
        return _make("unstable-predictions", "fired", f"Over {REPEATS} identical forward passes, {flips} "
                     f"predictions changed and logits varied by up to {spread:.2%} of their scale.", details)
    return _make("unstable-predictions", "ok", f"{REPEATS} repeated forward passes gave identical outputs.", details)


def check_loss_increase(model, x, y, threat: ThreatModel) -> Indicator:
    """A short projected-gradient ascent on the margin loss from the clean input must raise it."""
    if len(x) == 0:
        return _make("loss-not-increasing", "skipped", "No correctly classified sample to probe.")
    eps = threat.single
    step = 2.5 * eps / ASCENT_STEPS
    try:
        start, grad = input_gradient(model, x, y)
        best, x_adv = start.clone(), x.clone()
        for _ in range(ASCENT_STEPS):
            x_adv = ascent_step(threat, x, x_adv, grad, step, eps)
            loss, grad = input_gradient(model, x_adv, y)
            best = torch.maximum(best, torch.nan_to_num(loss, nan=float("-inf")))
    except RuntimeError:
        return _make("loss-not-increasing", "skipped", "The model gives no input gradient (see the gradients flag).")
    stuck = best <= start + 1e-4 * (1 + start.abs())
    details = {"probe_samples": len(x), "steps": ASCENT_STEPS, "no_increase": int(stuck.sum()),
               "mean_margin_start": float(start.mean()), "mean_margin_best": float(best.mean())}
    if stuck.float().mean() >= NO_PROGRESS_FRACTION:
        return _make("loss-not-increasing", "fired", f"A {ASCENT_STEPS}-step gradient ascent did not raise the loss "
                     f"on {int(stuck.sum())} of {len(x)} probe samples.", details)
    return _make("loss-not-increasing", "ok", f"Gradient ascent raised the loss on {len(x) - int(stuck.sum())} of "
                 f"{len(x)} probe samples.", details)


def check_tail_rise(state: RunState) -> Indicator:
    rising, checked = [], 0
    for unit in state.units:
        trace = unit.loss_trace
        if unit.family != "white-box" or len(trace) < 10:
            continue
        checked += 1
        # Mean of the last tenth of the steps against the tenth before, as a share of the
        # trace's range: a steady climb gives ~10%, a plateau ~0%. The trace averages over
        # the samples still standing, so it drops when one is fooled; the range (not the
        # rise since step 0) keeps those drops from passing for progress.
        k = max(1, len(trace) // 10)
        gain = sum(trace[-k:]) / k - sum(trace[-2 * k:-k]) / k
        span = max(trace) - min(trace)
        if span > 0 and gain > TAIL_RISE * span:
            rising.append({"attack": unit.attack, "eps": unit.eps, "steps": len(trace),
                           "tail_gain_share": round(gain / span, 3)})
    if not checked:
        return _make("loss-still-rising", "skipped", "No white-box attack with a loss trace of 10+ steps ran.")
    details = {"traces_checked": checked, "rising": rising}
    if rising:
        names = ", ".join(f"{r['attack']} at eps {r['eps']:g}" for r in rising)
        return _make("loss-still-rising", "fired", f"The loss was still rising in the last tenth of the steps for "
                     f"{names}.", details)
    return _make("loss-still-rising", "ok", f"All {checked} white-box loss traces had levelled off by their last "
                 "step.", details)


def check_black_box(state: RunState, suite: Suite) -> Indicator:
    family = {a.label: a.family for a in suite.attacks}
    order = state.order.attacks if state.order is not None else tuple(a.label for a in suite.attacks)
    white = [i for i, label in enumerate(order) if family[label] == "white-box"]
    if state.order is not None and state.order.adapted:
        return _black_box_first(state, {label for label in order if family[label] != "white-box"})
    late_black = {label for i, label in enumerate(order) if family[label] != "white-box" and white and i > max(white)}
    if not late_black:
        why = "no white-box attack" if not white else "no black-box or transfer attack after the white-box ones"
        return _make("black-box-beats-white-box", "skipped", f"The suite has {why}, so this was not checked.")
    count, total, details = _black_box_breaks(state, late_black)
    names, share = ", ".join(sorted(late_black)), count / max(total, 1)
    if count > BLACK_BOX_TOLERANCE * total:
        return _make("black-box-beats-white-box", "fired", f"{names} broke {count} of the {total} sample(s) "
                     f"every white-box attack had failed on ({share:.1%}).", details)
    if count:
        return _make("black-box-beats-white-box", "ok", f"{names} broke {count} of the {total} sample(s) the "
                     f"white-box attacks had left ({share:.2%}, within the {BLACK_BOX_TOLERANCE:.1%} tolerance): "
                     "isolated samples where random search found a better optimum, not a pattern of masking. "
                     "They are listed in the details and counted as broken.", details)
    return _make("black-box-beats-white-box", "ok", "The black-box attacks broke nothing the white-box attacks "
                 "had missed.", details)


def _black_box_first(state: RunState, black: set[str]) -> Indicator:
    """The verdict when the runner ran the black-box attacks first, because the gradient probe
    found unusable gradients: what they broke is what the white-box attacks could not be
    relied on to find, judged with the same tolerance."""
    count, total, details = _black_box_breaks(state, black)
    details["broken_by_black_box_first"] = details.pop("broken_only_by_black_box")
    details["order"] = "black-box first (adapted: the gradient probe found unusable gradients)"
    names, share = ", ".join(sorted(black)), count / max(total, 1)
    finding = (f"The gradient probe found unusable gradients, so {names} ran before the white-box attacks and "
               f"broke {count} of the {total} sample(s) ({share:.1%}).")
    return _make("black-box-beats-white-box", "fired" if count > BLACK_BOX_TOLERANCE * total else "ok", finding,
                 details)


def _black_box_breaks(state: RunState, black: set[str]) -> tuple[int, int, dict]:
    """(samples the ``black`` attacks broke, samples they attacked, details), over every eps."""
    per_eps, attacked = {}, {}
    for unit in state.units:
        if unit.attack in black:
            key = repr(unit.eps)
            attacked[key] = max(attacked.get(key, 0), unit.standing)  # the first one saw them all
            if unit.broken:
                per_eps.setdefault(key, []).extend(unit.broken)
    count, total = sum(len(v) for v in per_eps.values()), sum(attacked.values())
    return count, total, {"attacks": sorted(black), "broken_only_by_black_box": per_eps, "attacked": total,
                          "tolerance": BLACK_BOX_TOLERANCE}


def check_eps_monotonic(state: RunState) -> Indicator:
    epsilons = sorted({u.eps for u in state.units})
    if len(epsilons) < 2:
        return _make("accuracy-rises-with-eps", "skipped", "Single eps: run a sweep suite to check this.")
    masks = [state.robust_mask(e) for e in epsilons]
    accuracy = [float(m.float().mean()) for m in masks]
    rises = [(epsilons[i], epsilons[i + 1]) for i in range(len(masks) - 1) if accuracy[i + 1] > accuracy[i]]
    # A sample broken at a smaller eps but surviving a larger one: the larger-eps attack missed it.
    inconsistent = sum(int((~masks[i] & masks[j]).sum())
                       for i in range(len(masks)) for j in range(i + 1, len(masks)))
    details = {"eps": epsilons, "raw_robust_accuracy": accuracy, "rises": rises}
    if rises:
        details["sample_pairs_broken_small_but_not_large"] = inconsistent
        pairs = ", ".join(f"{a:g} -> {b:g}" for a, b in rises)
        return _make("accuracy-rises-with-eps", "fired", f"Robust accuracy went up from eps {pairs}.", details)
    return _make("accuracy-rises-with-eps", "ok", "Robust accuracy never rose as eps grew.", details)


def check_unbounded(model, x, y, threat: ThreatModel, seed: int) -> Indicator:
    if len(x) == 0:
        return _make("unbounded-attack-fails", "skipped", "No correctly classified sample to probe.")
    lo, hi = threat.bounds
    span = hi - lo
    eps = span if threat.norm == "linf" else span * x[0].numel() ** 0.5
    big = ThreatModel(norm=threat.norm, eps=eps, bounds=threat.bounds)
    # No random start: from a random point in so large a ball the model may be wrong by chance.
    attack = PGD(big, steps=UNBOUNDED_STEPS, random_start=False, seed=seed)
    try:
        (result,) = attack.run(model, x, y)
    except RuntimeError:
        return _make("unbounded-attack-fails", "fired", "PGD with an unbounded eps could not run: the model gives "
                     "no input gradient.")
    success = float(result.success.float().mean())
    details = {"probe_samples": len(x), "eps": eps, "steps": UNBOUNDED_STEPS, "success_rate": success}
    status = "fired" if success < UNBOUNDED_SUCCESS else "ok"
    return _make("unbounded-attack-fails", status, f"PGD-{UNBOUNDED_STEPS} at {threat.norm} eps {eps:.3g} (the whole "
                 f"input range) fooled {success:.0%} of {len(x)} probe samples.", details)


def check_unconfirmed(state: RunState) -> Indicator:
    bad = {u.key: u.unconfirmed for u in state.units if u.unconfirmed}
    if bad:
        return _make("unconfirmed-claims", "fired", f"{sum(bad.values())} claimed adversarial(s) failed the "
                     "re-check and were not counted.", {"per_attack": bad})
    return _make("unconfirmed-claims", "ok", "Every adversarial an attack reported was confirmed on re-check.")


def _make(key: str, status: str, finding: str, details: dict | None = None) -> Indicator:
    title, meaning, advice = TEXT[key]
    return Indicator(key=key, title=title, status=status, finding=finding, meaning=meaning, advice=advice,
                     details=details or {})
