"""Randomized smoothing: closed-form radii on a linear classifier, abstention, bounds."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from scipy.stats import binomtest, norm

from bastion.defenses.smoothing import (ABSTAIN, certified_radius, certify, clopper_pearson_lower,
                                        max_certifiable_radius, predict_smoothed, radius_grid)
from bastion.errors import UsageError


class LinearBinary(torch.nn.Module):
    """f(x) = 1 if w.x + b > 0 else 0, as logits [0, w.x + b]."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        score = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_clopper_pearson_matches_scipy_exact_interval():
    for k, n, alpha in [(990, 1000, 0.001), (60, 100, 0.01), (1, 5, 0.05), (20, 20, 0.001)]:
        expected = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
        assert clopper_pearson_lower(k, n, alpha) == pytest.approx(expected, rel=1e-9)
    assert clopper_pearson_lower(0, 10, 0.01) == 0.0


def test_radius_closed_form_for_linear_classifier():
    # For a linear f, P(f(x + d) = 1) = Phi((w.x + b) / (sigma ||w||)), so the exact radius
    # sigma * Phi^-1(p) equals the distance to the decision boundary |w.x + b| / ||w||.
    sigma, w, b = 0.5, torch.tensor([3.0, -4.0]), 0.5
    x = torch.tensor([0.6, 0.1])
    distance = (x @ w + b).item() / w.norm().item()
    p = norm.cdf(distance / sigma)
    assert certified_radius(p, sigma) == pytest.approx(distance, rel=1e-9)


@pytest.mark.parametrize("offset", [0.2, 0.45])
def test_certified_radius_agrees_with_linear_closed_form(offset):
    torch.manual_seed(0)
    sigma, samples, alpha = 0.5, 20000, 0.001
    w = torch.tensor([3.0, -4.0, 0.0, 12.0])  # ||w|| = 13
    model = LinearBinary(w, b=-0.1)
    # Points at a known signed distance from the boundary, on either side.
    direction = w / w.norm()
    base = direction * (0.1 / w.norm())  # on the boundary: w.base - 0.1 = 0
    x = torch.stack([base + offset * direction, base - offset * direction]).view(2, 1, 2, 2)
    cert = certify(model, x, sigma=sigma, n0=100, samples=samples, alpha=alpha, batch_size=5000, seed=1)
    assert cert.prediction.tolist() == [1, 0]
    p_true = norm.cdf(offset / sigma)
    for radius, p_lower in zip(cert.radius.tolist(), cert.p_lower.tolist()):
        assert radius == pytest.approx(sigma * norm.ppf(p_lower), rel=1e-9)
        assert p_lower <= p_true  # a lower bound (fails with probability alpha per sample)
        assert p_lower >= p_true - 0.02  # and a tight one at 20,000 samples
        assert radius <= offset  # never certifies past the true boundary
        assert radius >= offset - 0.06


def test_abstains_when_classes_are_tied():
    # At x = 0 exactly on the boundary, both classes have probability 1/2.
    model = LinearBinary(torch.tensor([1.0, 1.0, 1.0, 1.0]), b=0.0)
    x = torch.zeros(3, 1, 2, 2)
    cert = certify(model, x, sigma=0.25, n0=100, samples=2000, alpha=0.001, seed=0)
    assert cert.prediction.tolist() == [ABSTAIN] * 3
    assert cert.radius.tolist() == [0.0] * 3
    assert (predict_smoothed(model, x, sigma=0.25, samples=2000, alpha=0.001) == ABSTAIN).all()
    # Far from the boundary, PREDICT answers.
    far = torch.full((1, 1, 2, 2), 2.0)
    assert predict_smoothed(model, far, sigma=0.25, samples=200).tolist() == [1]


def test_constant_model_gets_the_largest_certifiable_radius_and_accuracy_curve():
    model = LinearBinary(torch.zeros(4), b=1.0)  # always class 1
    x = torch.rand(4, 1, 2, 2)
    cert = certify(model, x, sigma=0.25, n0=10, samples=500, alpha=0.001)
    top = max_certifiable_radius(0.25, 500, 0.001)
    assert top == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 500)), rel=1e-9)
    assert torch.allclose(cert.radius, torch.full((4,), top, dtype=torch.float64))
    y = torch.tensor([1, 1, 0, 1])
    assert cert.certified_accuracy(y, [0.0, top, top + 0.01]) == [0.75, 0.75, 0.0]
    grid = radius_grid(0.25, 500, 0.001)
    assert grid[0] == 0 and grid[-1] <= top and len(grid) >= 5


def test_deterministic_under_seed_and_rejects_bad_settings():
    model = LinearBinary(torch.tensor([1.0, -1.0, 0.5, 0.0]), b=0.1)
    x = torch.rand(3, 1, 2, 2)
    a = certify(model, x, sigma=0.3, n0=20, samples=300, seed=5)
    b = certify(model, x, sigma=0.3, n0=20, samples=300, seed=5)
    assert torch.equal(a.radius, b.radius) and torch.equal(a.prediction, b.prediction)
    for kwargs, message in [({"sigma": 0}, "sigma"), ({"sigma": 0.1, "samples": 0}, "samples"),
                            ({"sigma": 0.1, "alpha": 0.7}, "alpha")]:
        with pytest.raises(UsageError, match=message):
            certify(model, x, **kwargs)
    assert not math.isnan(float(a.p_lower.sum()))


def test_gaussian_recipe_trains_through_the_trainer_and_fails_clearly(tmp_path):
    from bastion.catalog import resolve
    from bastion.data import load_data
    from bastion.defenses.training import load_recipe, train
    from bastion.errors import ConfigError

    recipe = load_recipe(resolve("defenses", "gaussian-0.25"))
    assert (recipe.method, recipe.noise.sigma, recipe.model.architecture) == ("gaussian", 0.25, "mnist-cnn")
    small = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, architecture="digits-cnn"),
                                data=dataclasses.replace(recipe.data, holdout=100),
                                optimizer=dataclasses.replace(recipe.optimizer, epochs=3))
    result = train(small, load_data("digits", "train"))  # small and fast; needs its own architecture
    assert result.metrics["holdout_noisy"] > 0.5  # far above chance (0.1) after three short epochs
    test = load_data("digits", "test")
    noise = 0.25 * torch.randn(test.x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (result.model(test.x + noise).argmax(1) == test.y).float().mean() > 0.5
    for text, message in [("[noise]\nsigma = -1\n[recipe]\nmethod = \"gaussian\"", "'noise.sigma' must be > 0"),
                          ("[recipe]\nmethod = \"gauss\"", "'recipe.method' must be one of"),
                          ("[recipe]\nmethod = \"gaussian\"\n[noise]\nsigma = \"big\"",
                           "'noise.sigma' must be a number"),
                          ("[recipe]\nmethod = \"gaussian\"\n[optimiser]\nlr = 1", "unknown section 'optimiser'")]:
        path = tmp_path / "g.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_recipe(path)
