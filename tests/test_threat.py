import pytest
import torch

from bastion.errors import ThreatModelError
from bastion.threat import ThreatModel


def test_eps_list_is_sorted_and_deduplicated():
    t = ThreatModel(norm="l2", eps=[2.0, 0.5, 2.0])
    assert t.epsilons == (0.5, 2.0)
    assert t.at_eps(0.5).single == 0.5
    with pytest.raises(ThreatModelError, match="pick one"):
        t.single


@pytest.mark.parametrize("kwargs, message", [
    ({"norm": "l1"}, "unknown norm"),
    ({"eps": -0.1}, ">= 0"),
    ({"eps": float("nan")}, "finite"),
    ({"eps": []}, "empty"),
    ({"eps": "abc"}, "number"),
    ({"bounds": (1.0, 0.0)}, "lo < hi"),
])
def test_invalid_threat_models_are_rejected(kwargs, message):
    with pytest.raises(ThreatModelError, match=message):
        ThreatModel(**kwargs)


def test_frozen():
    t = ThreatModel()
    with pytest.raises(AttributeError):
        t.eps = 1.0


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.5)])
def test_projection_lands_in_ball_and_bounds(norm, eps):
    t = ThreatModel(norm=norm, eps=eps)
    x = torch.rand(16, 1, 8, 8)
    far = x + 10 * torch.randn_like(x)
    p = t.project(x, far)
    assert (t.distance(x, p) <= eps + 1e-5).all()
    assert p.min() >= 0 and p.max() <= 1
    inside = t.project(x, x + 0.01 * eps * torch.sign(torch.randn_like(x)) / 8)
    assert torch.allclose(t.project(x, inside), inside)
