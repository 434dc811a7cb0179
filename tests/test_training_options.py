"""Weight averaging and AWP: each changes what it should, ships what it should, and resumes exactly."""

from __future__ import annotations

import copy

import pytest
import tomli_w
import torch
from torch import nn

from bastion.defenses.training import load_recipe, save_trained_bundle, train
from bastion.defenses.training.averaging import WeightAverage
from bastion.defenses.training.awp import perturbed_parameters, weight_perturbation
from bastion.defenses.training.checkpoint import checkpoint_path
from bastion.defenses.training.losses import objective, training_inputs
from bastion.defenses.training.trainer import (TrainingMonitor, evaluate_holdout, make_optimizer, split_holdout,
                                                train_step)
from bastion.models import load_model
from bastion.models.architectures import ARCHITECTURES, digits_cnn
from training_helpers import digits_raw, digits_recipe, digits_train, kill_9_after_checkpoint, weights_equal

GAMMA = 0.01


@pytest.fixture(scope="module")
def data():
    return digits_train().take(300)


def _batch(n=64):
    batch = digits_train().take(n)
    return batch.x, batch.y


# ---- weight averaging ------------------------------------------------------------------

def test_average_update_rule_warm_up_and_buffers():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    average = WeightAverage(model, decay=0.99)
    start = copy.deepcopy(average.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()
    model(torch.randn(8, 4))  # moves BatchNorm's running statistics and its batch counter
    new = model.state_dict()

    average.update(model, step=0)  # warm-up: decay min(0.99, 1/10) = 0.1
    after = average.state_dict()
    for name in ("0.weight", "0.bias", "1.weight", "1.running_mean", "1.running_var"):
        assert torch.allclose(after[name], 0.1 * start[name] + 0.9 * new[name], atol=1e-6), name
    assert torch.equal(after["1.num_batches_tracked"], new["1.num_batches_tracked"])  # integers are copied
    assert average.decay_at(0) == pytest.approx(0.1) and average.decay_at(10_000) == 0.99
    assert not any(p.requires_grad for p in average.module.parameters())


def test_averaged_weights_are_judged_and_shipped(tmp_path, data):
    recipe = digits_recipe("trades", optimizer={"epochs": 2}, data={"holdout": 50}, average={"decay": 0.9})
    result = train(recipe, data)
    assert result.raw_model is not None and not weights_equal(result.model, result.raw_model)
    assert result.metrics["weights"] == "average"
    # The held-out figure of the last epoch is the average's, not the raw weights'.
    _, holdout = split_holdout(data, 50)
    assert evaluate_holdout(recipe, result.model, holdout) == {
        k: result.history[-1][k] for k in ("holdout_clean", "holdout_robust")}

    bundle = save_trained_bundle(result, tmp_path / "averaged", data)
    shipped = load_model(str(bundle)).module
    assert weights_equal(shipped, result.model) and not weights_equal(shipped, result.raw_model)
    assert load_model(str(bundle)).meta.training["settings"]["average"]["decay"] == 0.9

    plain = train(digits_recipe("trades", optimizer={"epochs": 2}, data={"holdout": 50}), data)
    assert plain.raw_model is None and plain.metrics["weights"] == "raw"
    assert weights_equal(plain.model, result.raw_model)  # averaging never changes the training itself


# ---- adversarial weight perturbation ---------------------------------------------------

def test_weight_perturbation_is_bounded_raises_the_loss_and_restores_exactly():
    torch.manual_seed(0)
    model = digits_cnn()
    x, y = _batch()
    before = copy.deepcopy(model.state_dict())

    def loss():
        return nn.functional.cross_entropy(model(x), y)

    loss_before = loss().item()
    with weight_perturbation(model, loss, GAMMA) as deltas:
        weights = perturbed_parameters(model)
        assert len(deltas) == len(weights) == 4  # two conv kernels, two dense matrices; no biases
        names = {id(p): n for n, p in model.named_parameters()}
        for w, v in zip(weights, deltas):
            original = before[names[id(w)]]
            assert torch.equal(w, original + v)
            assert 0 < v.norm() <= GAMMA * original.norm() * (1 + 1e-5)
            assert v.norm() == pytest.approx(GAMMA * original.norm().item(), rel=1e-4)
        for name, p in model.named_parameters():
            if p.dim() == 1:
                assert torch.equal(p, before[name]), f"{name} must not be perturbed"
        assert loss().item() > loss_before  # an ascent step on the loss
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_awp_step_is_an_optimizer_step_from_the_unperturbed_weights():
    recipe = digits_recipe("trades", awp={"gamma": GAMMA},
                           optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0})
    x, y = _batch()
    torch.manual_seed(0)
    model = digits_cnn()
    start = copy.deepcopy(model)

    train_step(recipe, model, make_optimizer(recipe, model), x, y, 0.2, (0.0, 1.0),
               torch.Generator().manual_seed(3), perturb=True)

    # The same step by hand: attack at w, perturb w by v, gradient at w + v, SGD step from w.
    reference = copy.deepcopy(start)
    x_adv = training_inputs(recipe, reference, x, y, 0.2, (0.0, 1.0), torch.Generator().manual_seed(3))
    weights = [p for p in reference.parameters() if p.dim() > 1]
    grads = torch.autograd.grad(objective(recipe, reference, x, x_adv, y, 0.2).loss, weights)
    perturbed = copy.deepcopy(reference)
    with torch.no_grad():
        for w, g in zip([p for p in perturbed.parameters() if p.dim() > 1], grads):
            w.add_(GAMMA * w.norm() / g.norm() * g)
    loss = objective(recipe, perturbed, x, x_adv, y, 0.2).loss
    at_perturbed = torch.autograd.grad(loss, list(perturbed.parameters()))
    with torch.no_grad():
        expected = [w - 0.05 * g for w, g in zip(reference.parameters(), at_perturbed)]
    for got, want in zip(model.parameters(), expected):
        assert torch.allclose(got, want, rtol=0, atol=1e-6)

    unperturbed = copy.deepcopy(start)
    train_step(recipe, unperturbed, make_optimizer(recipe, unperturbed), x, y, 0.2, (0.0, 1.0),
               torch.Generator().manual_seed(3), perturb=False)
    assert not weights_equal(unperturbed, model), "AWP changed nothing"


def test_awp_starts_after_its_warm_up_and_is_counted(data):
    recipe = digits_recipe("pgd-at", optimizer={"epochs": 2}, data={"holdout": 50},
                           awp={"gamma": GAMMA, "warmup_epochs": 1})
    result = train(recipe, data)
    assert [h["awp"] for h in result.history] == [False, True]
    assert result.metrics["awp_steps"] == 4  # 250 training images in batches of 64: 4 steps, epoch 2 only
    plain = train(digits_recipe("pgd-at", optimizer={"epochs": 2}, data={"holdout": 50}), data)
    assert not weights_equal(plain.model, result.model)

    messages = []

    class Recorder(TrainingMonitor):
        def message(self, text):
            messages.append(text)

    never = digits_recipe("clean", optimizer={"epochs": 1}, data={"holdout": 50}, awp={"gamma": GAMMA,
                                                                                       "warmup_epochs": 1})
    assert train(never, data, monitor=Recorder()).metrics["awp_steps"] == 0
    assert any("AWP never starts" in m for m in messages)


def test_smallcnn_is_registered_and_takes_mnist():
    model = ARCHITECTURES["mnist-smallcnn"]()
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert 300_000 < sum(p.numel() for p in model.parameters()) < 320_000
    assert len(perturbed_parameters(model)) == 7  # four kernels, three dense matrices


# ---- resume after kill -9 ----------------------------------------------------------------

_CHILD = """
import sys, torch
from bastion.data import load_data
from bastion.defenses.training import load_recipe, train
torch.set_num_threads(1)
train(load_recipe(sys.argv[1]), load_data("digits", "train").take(300), checkpoint_dir=sys.argv[2])
"""


def test_resume_after_kill_9_keeps_average_and_perturbation_state(tmp_path, data):
    raw = digits_raw("trades", optimizer={"epochs": 6}, data={"holdout": 50},
                     average={"decay": 0.9}, awp={"gamma": GAMMA, "warmup_epochs": 1})
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text(tomli_w.dumps(raw))
    recipe = load_recipe(recipe_file)
    whole = train(recipe, data, checkpoint_dir=tmp_path / "whole")

    ckpt = tmp_path / "killed"
    kill_9_after_checkpoint(["-c", _CHILD, str(recipe_file), str(ckpt)], checkpoint_path(ckpt))

    # The checkpoint holds the raw weights and their average, apart.
    payload = torch.load(checkpoint_path(ckpt), weights_only=True)
    assert payload["average"].keys() == payload["model"].keys()
    assert any(not torch.equal(payload["average"][k], payload["model"][k]) for k in payload["model"])

    resumed = train(recipe, data, checkpoint_dir=ckpt, resume=True)
    assert 1 <= resumed.resumed_from < 6 and resumed.metrics["epochs_run"] == 6
    assert weights_equal(whole.model, resumed.model), "averaged weights differ after resume"
    assert weights_equal(whole.raw_model, resumed.raw_model), "raw weights differ after resume"
    assert resumed.metrics["awp_steps"] == whole.metrics["awp_steps"] == 5 * 4
    assert [h["awp"] for h in resumed.history] == [h["awp"] for h in whole.history]
