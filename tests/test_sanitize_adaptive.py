"""A sanitiser must not look robust only because it breaks gradients: BPDA and EOT bring its
robust accuracy back to (at most a few points above) the bare model's where it offers no real
robustness, and the same attack without them is fooled."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.attacks import get_attack
from bastion.data import load_data
from bastion.defenses.sanitizer import SanitizedModel, Sanitizer
from bastion.defenses.transforms import JPEG, BitDepth, GaussianNoise
from bastion.models import load_model
from bastion.threat import ThreatModel

EPS = 0.1
SAMPLES = 100
FEW_POINTS = 0.05


class NaiveSanitized(nn.Module):
    """What evaluating a sanitiser without BPDA/EOT looks like: autograd straight through it."""

    def __init__(self, model, transforms):
        super().__init__()
        self.model, self.transforms = model, transforms

    def forward(self, x):
        for t in self.transforms:
            x = t.apply(x, (0.0, 1.0))
        return self.model(x)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = load_model("mnist-cnn").module
    data = load_data("mnist").take(SAMPLES)
    return model, data


def robust_accuracy(model, data):
    attack = get_attack("pgd")(ThreatModel(eps=EPS), steps=20, seed=0)
    return attack.run(model, data.x, data.y)[0].robust_accuracy


@pytest.fixture(scope="module")
def bare(setup):
    model, data = setup
    return robust_accuracy(model, data)


def test_bpda_breaks_bit_depth_that_naive_gradients_cannot(setup, bare):
    model, data = setup
    transforms = [BitDepth(4)]
    adaptive = robust_accuracy(SanitizedModel(model, Sanitizer(transforms=transforms)), data)
    naive = robust_accuracy(NaiveSanitized(model, transforms), data)
    assert adaptive <= bare + FEW_POINTS
    assert naive >= bare + 0.25  # zero gradients: the naive attack barely moves


def test_bpda_through_jpeg(setup, bare):
    model, data = setup
    adaptive = robust_accuracy(SanitizedModel(model, Sanitizer(transforms=[JPEG(90)])), data)
    assert adaptive <= bare + FEW_POINTS


def test_eot_and_bpda_through_random_sanitizer(setup, bare):
    model, data = setup
    transforms = [BitDepth(4), GaussianNoise(0.05)]
    wrapped = SanitizedModel(model, Sanitizer(transforms=transforms, eot_samples=4))
    assert wrapped.eot_samples == 4  # chosen from the transforms' declarations
    assert robust_accuracy(wrapped, data) <= bare + FEW_POINTS


def test_sanitized_bundle_loads_as_attack_ready_model(tmp_path, setup):
    from bastion.defenses.sanitizer import load_sanitizer, save_sanitized_bundle

    loaded = load_model("mnist-cnn")
    path = save_sanitized_bundle(loaded, load_sanitizer("sanitize-noise"), tmp_path / "bundle")
    again = load_model(path)
    assert isinstance(again.module, SanitizedModel)
    assert again.module.eot_samples == 8 and again.meta.sanitizer["name"] == "sanitize-noise"
    assert [t.kind for t in again.module.sanitizer.transforms] == ["bit-depth", "gaussian-noise"]
    x = setup[1].x[:4]
    assert torch.equal(again.module.model(x), loaded.module(x))  # same weights underneath
