"""bastion's attacks against references: ART on the bundled model, the FAB projection's
optimality conditions, the ART adapter, and the `bastion attack` command."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from bastion.attacks import get_attack
from bastion.attacks.apgd import checkpoints
from bastion.attacks.art_adapter import ARTAttack
from bastion.attacks.fab import project_onto_hyperplane
from bastion.cli import main
from bastion.data import load_data
from bastion.errors import AttackError
from bastion.models import load_model
from bastion.threat import ThreatModel

N_AGREEMENT = 150
EPS, STEPS = 0.1, 10


@pytest.fixture(scope="module")
def mnist():
    model = load_model("mnist-cnn").module
    data = load_data("mnist", "test").take(N_AGREEMENT)
    return model, data.x, data.y


def art_robust_accuracy(model, x, y, attack_class, **kwargs) -> float:
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10,
                                   clip_values=(0.0, 1.0), device_type="cpu")
    np.random.seed(0)
    x_adv = attack_class(classifier, verbose=False, **kwargs).generate(x.numpy(), y=y.numpy())
    return float((classifier.predict(x_adv).argmax(1) == y.numpy()).mean())


def test_pgd_is_at_least_as_strong_as_arts(mnist):
    from art.attacks.evasion import ProjectedGradientDescent

    model, x, y = mnist
    (ours,) = get_attack("pgd")(ThreatModel(eps=EPS), steps=STEPS).run(model, x, y)
    theirs = art_robust_accuracy(model, x, y, ProjectedGradientDescent, eps=EPS, eps_step=2.5 * EPS / STEPS,
                                 max_iter=STEPS, num_random_init=1)
    assert 0.2 < theirs < 0.9  # the comparison means something only away from 0% and 100%
    assert ours.robust_accuracy <= theirs + 0.01 + 1e-6


def test_apgd_ce_is_at_least_as_strong_as_arts(mnist):
    from art.attacks.evasion import AutoProjectedGradientDescent

    model, x, y = mnist
    (ours,) = get_attack("apgd-ce")(ThreatModel(eps=EPS), steps=STEPS).run(model, x, y)
    theirs = art_robust_accuracy(model, x, y, AutoProjectedGradientDescent, eps=EPS, eps_step=2 * EPS,
                                 max_iter=STEPS, nb_random_init=1, loss_type="cross_entropy")
    assert 0.2 < theirs < 0.9
    assert ours.robust_accuracy <= theirs + 0.01 + 1e-6


def test_iterative_beats_single_step(mnist):
    model, x, y = mnist
    (fgsm,) = get_attack("fgsm")(ThreatModel(eps=EPS)).run(model, x, y)
    (pgd,) = get_attack("pgd")(ThreatModel(eps=EPS), steps=STEPS).run(model, x, y)
    assert pgd.robust_accuracy < fgsm.robust_accuracy


def test_apgd_checkpoints_follow_the_paper():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_projection_reaches_the_hyperplane_inside_the_box_with_least_norm(norm):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 4, 4, generator=g)
    w = torch.randn(64, 1, 4, 4, generator=g)
    c = torch.randn(64, generator=g) * 0.5
    delta = project_onto_hyperplane(x, w, c, (0.0, 1.0), norm)
    moved = x + delta
    assert moved.min() >= -1e-6 and moved.max() <= 1 + 1e-6
    reached = (w * delta).flatten(1).sum(1)
    reachable = (w * torch.where(w * c.sign().view(-1, 1, 1, 1) > 0, 1 - x, -x)).flatten(1).sum(1).abs() >= c.abs()
    assert torch.allclose(reached[reachable], c[reachable], atol=1e-4)
    # No random feasible point of the hyperplane is closer than the projection.
    size = (lambda d: d.flatten(1).abs().amax(1)) if norm == "linf" else (lambda d: d.flatten(1).norm(dim=1))
    for _ in range(20):
        other = torch.rand(x.shape, generator=g) - x  # a random point of the box
        t = c / (w * other).flatten(1).sum(1)  # scaled onto the hyperplane
        ok = reachable & (t > 0) & (t <= 1)  # still inside the box (the box is convex and contains x)
        assert (size(delta)[ok] <= size(t.view(-1, 1, 1, 1) * other)[ok] + 1e-5).all()


def test_art_adapter_runs_a_black_box_attack_end_to_end(mnist):
    model, x, y = mnist
    attack = get_attack("art")(ThreatModel(norm="l2", eps=10.0), attack="HopSkipJump", max_iter=2, max_eval=50,
                               init_eval=10)
    assert attack.family == "black-box"
    (result,) = attack.run(model, x[:8], y[:8])
    assert result.success.any()
    assert (attack.threat.distance(x[:8], result.x_adv) <= 10.0 + 1e-4).all()
    assert get_attack("art")(ThreatModel(eps=0.1), attack="FastGradientMethod").family == "white-box"


@pytest.mark.parametrize("name, params", [("os", {}), ("EvasionAttack.__init__", {}), ("Nope", {}),
                                          ("HopSkipJump", {"no_such_param": 1})])
def test_art_adapter_refuses_what_is_not_an_art_attack(name, params):
    with pytest.raises(AttackError):
        ARTAttack(ThreatModel(eps=0.1), attack=name, **params)


def run_cli(*args):
    return CliRunner().invoke(main, ["attack", *args])


def test_cli_writes_npz_and_prints_json(tmp_path):
    out = tmp_path / "adv.npz"
    result = run_cli("--attack", "apgd-ce", "--eps", "0.1,0.3", "--n", "20", "-p", "steps=5", "--out", str(out),
                     "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["params"]["steps"] == 5 and [r["eps"] for r in summary["results"]] == [0.1, 0.3]
    with np.load(out, allow_pickle=False) as saved:
        assert saved["x_adv"].shape == (20, 1, 28, 28) and saved["robust"].shape == (2, 20)
        assert np.abs(saved["x_adv"] - load_data("mnist", "test").take(20).x.numpy()).max() <= 0.3 + 1e-6


@pytest.mark.parametrize("params", [["-p", "steps"], ["-p", "bogus=1"], ["-p", "steps=0"], ["-p", "steps=abc"]])
def test_cli_bad_params_give_one_line_errors(params):
    result = run_cli("--attack", "pgd", "--eps", "0.1", "--n", "5", *params)
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error:")


def test_cli_names_the_attacks_on_an_unknown_one():
    result = run_cli("--attack", "nope", "--eps", "0.1")
    assert result.exit_code == 2 and "apgd-ce" in result.output and "square" in result.output
    assert "fab-t" in CliRunner().invoke(main, ["attack", "--help"]).output
