"""Feature-squeezing adversarial-example detector (Xu et al. 2018), with its adaptive attack.

The score of an input is the largest L1 distance between the model's softmax on the
input and on each squeezed version of it (bit-depth reduction, median smoothing).
Clean inputs barely move under squeezing; many adversarial ones do. The threshold
is calibrated on clean data to a target false-positive rate.

A detector is only as good as its worst case, so :func:`adaptive_evasion_attack`
attacks classifier and detector together: PGD (BPDA through the squeezers) that
pushes the input and all its squeezed versions towards the same wrong class while
keeping the detector score down, and keeps the first point that is both
misclassified and under the threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.base import default_batch_size, predict
from bastion.attacks.params import MAX_STEPS, integer
from bastion.attacks.toolbox import ascent_step, random_in_ball
from bastion.defenses.transforms import BitDepth, MedianSmooth, Transform, apply_for_attack
from bastion.errors import UsageError
from bastion.threat import ThreatModel


#: The detector-aware attack's step budget.
ADAPTIVE_STEPS = integer("steps", 100, 1, MAX_STEPS)


def default_squeezers() -> list[Transform]:
    """Xu et al.'s MNIST configuration: 1-bit depth and a 2x2 median filter."""
    return [BitDepth(1), MedianSmooth(2)]


class FeatureSqueezingDetector:
    def __init__(self, model: nn.Module, squeezers: list[Transform] | None = None, *,
                 bounds: tuple[float, float] = (0.0, 1.0), batch_size: int | None = None) -> None:
        self.model = model
        self.squeezers = squeezers if squeezers is not None else default_squeezers()
        if not self.squeezers:
            raise UsageError("a feature-squeezing detector needs at least one squeezer")
        self.bounds = bounds
        self.batch_size = batch_size  # None: the attacks' default for the device
        self.threshold: float | None = None
        self.target_fpr: float | None = None

    def score_with_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-sample scores and the logits of [x, squeezed x...], differentiable (BPDA) in ``x``."""
        logits = [self.model(x)] + [self.model(apply_for_attack(s, x, self.bounds)) for s in self.squeezers]
        probs = [F.softmax(z, dim=1) for z in logits]
        distances = torch.stack([(probs[0] - p).abs().sum(dim=1) for p in probs[1:]])
        return distances.amax(dim=0), logits

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample detector scores in [0, 2] (no gradients, batched)."""
        with torch.no_grad():
            batch = self.batch_size or default_batch_size(x.device)
            return torch.cat([self.score_with_grad(chunk)[0] for chunk in x.split(batch)])

    def calibrate(self, x_clean: torch.Tensor, fpr: float) -> float:
        """Set the threshold so that at most ``fpr`` of ``x_clean`` scores above it."""
        if not 0 < fpr < 1:
            raise UsageError(f"target false-positive rate must be in (0, 1), got {fpr}")
        if len(x_clean) < 2:
            raise UsageError("calibration needs at least 2 clean samples")
        ordered = self.scores(x_clean).sort().values
        # Flagging means score > threshold, so the ceil((1 - fpr) * n)-th smallest score
        # leaves at most floor(fpr * n) calibration samples above it.
        index = max(math.ceil((1 - fpr) * len(ordered)) - 1, 0)
        self.threshold = float(ordered[index])
        self.target_fpr = fpr
        return self.threshold

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        """bool per sample: flagged as adversarial."""
        if self.threshold is None:
            raise UsageError("calibrate the detector on clean data before detecting")
        return self.scores(x) > self.threshold


def adaptive_evasion_attack(detector: FeatureSqueezingDetector, x: torch.Tensor, y: torch.Tensor,
                            threat: ThreatModel, *, steps: int = 100, step_size: float | None = None,
                            score_weight: float = 1.0, all_views: bool = True, seed: int = 0) -> torch.Tensor:
    """PGD against classifier and detector together; returns adversarial candidates.

    Loss (maximised): ``-logsumexp_v CE(f(v), t) - score_weight * relu(score - threshold/2)``
    over ``v`` in {x, squeezed x...} (only ``x`` when ``all_views`` is False), with ``t`` the
    currently most likely wrong class of the summed logits, so that every view agrees on
    one wrong class with confidence.
    """
    if detector.threshold is None:
        raise UsageError("calibrate the detector before attacking it")
    _check_adaptive_steps(steps)
    eps = threat.single
    alpha = step_size or 2.5 * eps / steps
    generator = torch.Generator(device=x.device).manual_seed(seed)
    # A random start in the Linf cube; for L2, start at x itself.
    start = x + random_in_ball(x, "linf", eps, generator) if threat.norm == "linf" else x
    x_adv = threat.project(x, start, eps)
    best = x.clone()
    done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    margin = detector.threshold / 2
    for _ in range(steps + 1):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            score, logits = detector.score_with_grad(x_adv)
            total = sum(z.detach() for z in logits)
            total[torch.arange(len(y)), y] = -torch.inf
            target = total.argmax(dim=1)
            views = logits if all_views else logits[:1]
            # A soft maximum over the views' losses puts the effort on the view hardest to
            # flip (usually the bit-depth one), which a plain sum neglects.
            loss = -torch.logsumexp(torch.stack([F.cross_entropy(z, target, reduction="none") for z in views]), 0)
            loss = loss - score_weight * (score - margin).clamp_min(0)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        evaded = (logits[0].argmax(dim=1) != y) & (score <= detector.threshold) & ~done
        best[evaded] = x_adv.detach()[evaded]
        done |= evaded
        if bool(done.all()):
            break
        x_adv = ascent_step(threat, x, x_adv.detach(), grad, alpha, eps)
    still = ~done
    best[still] = x_adv.detach()[still]  # no evasion found: return the last iterate
    return best


@dataclass
class DetectionReport:
    threshold: float
    target_fpr: float
    clean_fpr: float             # on held-out clean samples
    n_clean: int
    attack: str | None = None
    eps: float | None = None
    n_attacked: int = 0          # held-out samples the model classifies correctly
    attack_success: float = 0.0  # of those, misclassified after the (non-adaptive) attack
    detection_rate: float = 0.0  # of the successful adversarial examples, flagged
    undetected_success: float = 0.0  # of n_attacked: misclassified and not flagged (non-adaptive)
    adaptive_undetected_success: float | None = None  # same, under the detector-aware attack

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def evaluate_detector(detector: FeatureSqueezingDetector, x: torch.Tensor, y: torch.Tensor, *,
                      attack=None, adaptive_steps: int = 100, seed: int = 0) -> DetectionReport:
    """Held-out FPR on ``x``, and (with a bastion ``attack``) detection and evasion rates."""
    _check_adaptive_steps(adaptive_steps)
    flagged_clean = detector.detect(x)
    report = DetectionReport(threshold=float(detector.threshold), target_fpr=float(detector.target_fpr),
                             clean_fpr=flagged_clean.float().mean().item(), n_clean=len(x))
    if attack is None:
        return report
    correct = predict(detector.model, x, detector.batch_size) == y
    xs, ys = x[correct], y[correct]
    report.attack, report.eps, report.n_attacked = attack.name, attack.threat.single, len(xs)
    if not len(xs):
        return report
    x_adv = attack.perturb(detector.model, xs, ys)
    fooled = predict(detector.model, x_adv, detector.batch_size) != ys
    flagged = detector.detect(x_adv)
    report.attack_success = fooled.float().mean().item()
    report.detection_rate = flagged[fooled].float().mean().item() if fooled.any() else 0.0
    report.undetected_success = (fooled & ~flagged).float().mean().item()
    # Two objectives, worst case per sample: all views agreeing on a wrong class, or the
    # input alone misclassified while the score stays low.
    evaded = torch.zeros(len(xs), dtype=torch.bool, device=xs.device)
    for all_views in (True, False):
        x_adaptive = adaptive_evasion_attack(detector, xs, ys, attack.threat, steps=adaptive_steps,
                                             all_views=all_views, seed=seed)
        evaded |= (predict(detector.model, x_adaptive, detector.batch_size) != ys) & ~detector.detect(x_adaptive)
    report.adaptive_undetected_success = evaded.float().mean().item()
    return report


def _check_adaptive_steps(steps: int) -> None:
    problem = ADAPTIVE_STEPS.problem(steps)
    if problem:
        raise UsageError(f"adaptive attack: {problem}")
