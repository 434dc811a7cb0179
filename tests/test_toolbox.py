"""The attack toolbox: margin, steepest ascent, random-in-ball, per-sample broadcasting."""

import math

import torch

from bastion.attacks.toolbox import margin, per_sample, random_in_ball, steepest_ascent


def test_margin_is_negative_exactly_when_fooled():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 0])
    assert margin(logits, y).tolist() == [2.0, -2.0]
    assert margin(logits, y, target=torch.tensor([2, 2])).tolist() == [3.0, -1.0]


def test_steepest_ascent_has_unit_norm():
    grad = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(steepest_ascent(grad, "linf"), grad.sign())
    norms = steepest_ascent(grad, "l2").flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.ones(5))
    assert torch.equal(steepest_ascent(torch.zeros(2, 3), "l2"), torch.zeros(2, 3))


def test_random_in_ball_stays_inside_and_fills_the_volume():
    x = torch.zeros(4000, 1, 2, 2)
    g = torch.Generator().manual_seed(0)
    linf = random_in_ball(x, "linf", 0.3, g)
    assert linf.abs().max() <= 0.3 and linf.abs().max() > 0.29
    l2 = random_in_ball(x, "l2", 2.0, g).flatten(1).norm(dim=1)
    assert l2.max() <= 2.0 + 1e-6
    # Uniform by volume in 4 dimensions: P(r <= eps/2) = (1/2)^4.
    share = (l2 <= 1.0).float().mean().item()
    assert math.isclose(share, 1 / 16, abs_tol=0.02)


def test_per_sample_broadcasts_over_any_rank():
    assert per_sample(torch.arange(3.0), torch.zeros(3, 2, 5, 5)).shape == (3, 1, 1, 1)
    assert per_sample(torch.arange(3.0), torch.zeros(3, 7)).shape == (3, 1)
