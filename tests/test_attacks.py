"""Invariants every registered attack must keep, on a tiny model and a few samples."""

import pytest
import torch
from torch import nn

from bastion.attacks import ATTACKS, Attack, get_attack
from bastion.errors import AttackError
from bastion.threat import ThreatModel

#: Small budgets so the whole file runs in seconds. A new attack must be added here.
FAST = {
    "fgsm": {},
    "pgd": {"steps": 10},
    "apgd-ce": {"steps": 10},
    "apgd-dlr": {"steps": 10},
    "apgd-t": {"steps": 5, "n_target_classes": 3},
    "apgd-mm": {"steps": 5, "n_target_classes": 2, "extra_target_classes": 2},
    "fab-t": {"steps": 10, "n_target_classes": 3},
    "cw-l2": {"steps": 30, "binary_search_steps": 4, "lr": 0.1, "initial_const": 1.0},
    "deepfool": {"steps": 20},
    "square": {"n_queries": 300},
    "square-check": {"n_queries": 300, "check_queries": 100},
    "art": {"attack": "FastGradientMethod"},
}
#: A budget large enough to move an 8x8 input anywhere in [0, 1]^64.
HUGE_EPS = {"linf": 1.0, "l2": 8.0}
MODERATE_EPS = {"linf": 0.05, "l2": 0.3}


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()


@pytest.fixture(scope="module")
def setup():
    model = tiny_model()
    x = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample starts correctly classified
    return model, x, y


def cases() -> list:
    return [pytest.param(name, norm, id=f"{name}-{norm}") for name in sorted(ATTACKS) for norm in ATTACKS[name].norms]


def make(name: str, norm: str, eps, seed: int = 0) -> Attack:
    return get_attack(name)(ThreatModel(norm=norm, eps=eps), seed=seed, **FAST[name])


def test_every_registered_attack_is_covered():
    assert set(FAST) == set(ATTACKS)


@pytest.mark.parametrize("name, norm", cases())
def test_eps_zero_changes_nothing(setup, name, norm):
    model, x, y = setup
    (result,) = make(name, norm, 0.0).run(model, x, y)
    assert torch.equal(result.x_adv, x)
    assert result.robust.all()


@pytest.mark.parametrize("name, norm", cases())
def test_outputs_stay_in_the_eps_ball_and_bounds_and_are_deterministic(setup, name, norm):
    model, x, y = setup
    eps = MODERATE_EPS[norm]
    attack = make(name, norm, eps, seed=3)
    (first,) = attack.run(model, x, y)
    assert (attack.threat.distance(x, first.x_adv) <= eps + 1e-5).all()
    assert first.x_adv.min() >= 0 and first.x_adv.max() <= 1
    (second,) = make(name, norm, eps, seed=3).run(model, x, y)
    assert torch.equal(first.x_adv, second.x_adv) and torch.equal(first.robust, second.robust)


@pytest.mark.parametrize("name, norm", cases())
def test_a_huge_eps_fools_almost_everything(setup, name, norm):
    model, x, y = setup
    (result,) = make(name, norm, HUGE_EPS[norm]).run(model, x, y)
    assert result.success.float().mean() >= 0.95
    with torch.no_grad():  # reported successes are real
        assert (model(result.x_adv[result.success]).argmax(1) != y[result.success]).all()


@pytest.mark.parametrize("name, norm", cases())
def test_eps_sweep_is_monotone_and_restores_train_mode(setup, name, norm):
    model, x, y = setup
    model.train()
    try:
        results = make(name, norm, [0.0, MODERATE_EPS[norm], 4 * MODERATE_EPS[norm]]).run(model, x, y)
        assert model.training
    finally:
        model.eval()
    accuracies = [r.robust_accuracy for r in results]
    assert [r.eps for r in results] == sorted(r.eps for r in results)
    assert all(a >= b for a, b in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[0] == 1.0 and accuracies[-1] < 1.0


@pytest.mark.parametrize("name", [n for n in sorted(ATTACKS) if ATTACKS[n].FAMILY == "white-box"])
def test_white_box_attacks_log_their_loss(setup, name):
    model, x, y = setup
    (result,) = make(name, "l2" if name == "cw-l2" else "linf", 0.02).run(model, x, y)
    assert result.loss_trace and all(v == v for v in result.loss_trace)  # present and not NaN


@pytest.mark.parametrize("bad", [float("nan"), 1.5, -0.1])
def test_inputs_outside_bounds_or_nan_are_refused(setup, bad):
    model, x, y = setup
    x = x.clone()
    x[0, 0, 0, 0] = bad
    with pytest.raises(AttackError):
        make("pgd", "linf", 0.1).run(model, x, y)


def test_unsupported_norm_and_bad_parameters_are_refused():
    with pytest.raises(AttackError, match="linf"):
        get_attack("cw-l2")(ThreatModel(norm="linf", eps=0.1))
    for name, params in [("pgd", {"steps": 0}), ("apgd-ce", {"rho": 2}), ("fab-t", {"eta": 0.5}),
                         ("square", {"p_init": 0}), ("deepfool", {"num_classes": 1}), ("cw-l2", {"lr": 0})]:
        with pytest.raises(AttackError):
            get_attack(name)(ThreatModel(norm="l2", eps=0.1), **params)
    with pytest.raises(AttackError, match="unknown attack"):
        get_attack("nope")


def test_fooled_samples_leave_the_working_batch(setup):
    """At a huge eps every sample falls in the first steps, so far fewer than steps x n gradients are spent."""
    model, x, y = setup
    for name in ("pgd", "apgd-ce", "apgd-t", "fab-t", "deepfool"):
        attack = get_attack(name)(ThreatModel(norm="linf", eps=1.0), steps=50)
        (result,) = attack.run(model, x, y)
        assert result.success.all()
        assert result.queries < 10 * len(x), (name, result.queries)


def test_square_respects_its_query_budget(setup):
    model, x, y = setup
    (result,) = get_attack("square")(ThreatModel(norm="linf", eps=0.02), n_queries=50).run(model, x, y)
    assert result.queries <= (50 + 1) * len(x)  # + the base's clean prediction


@pytest.mark.parametrize("name", ["fab-t", "apgd-t", "apgd-mm"])
def test_targets_sharing_a_batch_keep_the_attack_as_strong(setup, name):
    """Batch size 1 runs one target at a time; the default batch runs several targets of a sample
    together. FAB-T has no random start, so the same samples fall; the APGD attacks draw their
    random starts in another order, so their strength (not each sample) must match."""
    model, x, y = setup
    threat = ThreatModel(norm="linf", eps=MODERATE_EPS["linf"])
    params = {**FAST[name], "n_target_classes": 4}
    one_at_a_time = get_attack(name)(threat, batch_size=1, **params).run(model, x, y)[0]
    batched = get_attack(name)(threat, **params).run(model, x, y)[0]
    assert 0 < int(batched.robust.sum()) < len(x)
    if name == "fab-t":
        assert torch.equal(one_at_a_time.robust, batched.robust)
    else:
        assert abs(int(one_at_a_time.robust.sum()) - int(batched.robust.sum())) <= 1
