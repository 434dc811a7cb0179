"""Feature-squeezing detector: calibrated false-positive rate, detection, adaptive evasion."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks import get_attack, predict
from bastion.data import load_data
from bastion.defenses.detection import FeatureSqueezingDetector, adaptive_evasion_attack, evaluate_detector
from bastion.errors import UsageError
from bastion.models import load_model
from bastion.threat import ThreatModel


@pytest.fixture(scope="module")
def parts():
    model = load_model("mnist-cnn").module
    data = load_data("mnist")
    return model, data


@pytest.mark.parametrize("fpr", [0.05, 0.1])
def test_false_positive_rate_on_held_out_clean_data_is_near_target(parts, fpr):
    model, data = parts
    detector = FeatureSqueezingDetector(model)
    detector.calibrate(data.x[:500], fpr)
    assert (detector.scores(data.x[:500]) > detector.threshold).float().mean() <= fpr
    held_out = detector.detect(data.x[500:]).float().mean().item()
    # 500 held-out samples: binomial std ~0.01-0.013; allow calibration error on top.
    assert abs(held_out - fpr) <= 0.04


def test_calibration_order_statistic_exact():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 2)

    detector = FeatureSqueezingDetector(Fixed())
    detector.scores = lambda x: torch.linspace(0, 1, len(x))  # 0, 0.01, ..., 1
    assert detector.calibrate(torch.zeros(101, 1, 4, 4), 0.1) == pytest.approx(0.9)
    with pytest.raises(UsageError, match="false-positive rate"):
        detector.calibrate(torch.zeros(10, 1, 4, 4), 1.5)
    with pytest.raises(UsageError, match="calibrate"):
        FeatureSqueezingDetector(Fixed()).detect(torch.zeros(2, 1, 4, 4))


def test_detects_plain_pgd_and_reports_adaptive_evasion(parts):
    model, data = parts
    detector = FeatureSqueezingDetector(model)
    detector.calibrate(data.x[:500], 0.05)
    x, y = data.x[500:540], data.y[500:540]
    attack = get_attack("pgd")(ThreatModel(eps=0.3), steps=20)
    report = evaluate_detector(detector, x, y, attack=attack, adaptive_steps=20)
    assert report.attack_success > 0.9
    assert report.detection_rate > 0.8  # most plain adversarial examples stand out under squeezing
    assert report.adaptive_undetected_success is not None
    assert report.adaptive_undetected_success >= report.undetected_success
    assert 0 <= report.clean_fpr <= 0.2


def test_adaptive_attack_stays_in_the_ball_and_evades_more_than_plain_pgd(parts):
    model, data = parts
    detector = FeatureSqueezingDetector(model)
    detector.calibrate(data.x[:300], 0.05)
    x, y = data.x[600:660], data.y[600:660]
    threat = ThreatModel(eps=0.3)
    plain = get_attack("pgd")(threat, steps=20).perturb(model, x, y)
    adaptive = adaptive_evasion_attack(detector, x, y, threat, steps=20)
    assert (adaptive - x).abs().max() <= 0.3 + 1e-6 and adaptive.min() >= 0 and adaptive.max() <= 1
    evaded = (predict(model, adaptive) != y) & ~detector.detect(adaptive)
    plain_evaded = (predict(model, plain) != y) & ~detector.detect(plain)
    assert evaded.sum() > plain_evaded.sum()
    # Where it evades, the score is under the threshold by construction of the check.
    assert (detector.scores(adaptive[evaded]) <= detector.threshold).all()
