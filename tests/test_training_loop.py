"""The training loop: each recipe buys robustness, runs are deterministic, resume is exact, the guard works."""

from __future__ import annotations

import pytest
import torch

from bastion.defenses.training import train
from bastion.defenses.training.checkpoint import TrainingState, checkpoint_path, load_checkpoint
from bastion.defenses.training.trainer import (TrainingMonitor, _apply_guard, _metrics, learning_rate,
                                                make_optimizer, random_shift, training_eps)
from bastion.errors import UsageError
from bastion.models.architectures import digits_cnn
from training_helpers import digits_recipe, digits_train, robust_accuracy, weights_equal

FAST = {"optimizer": {"epochs": 4, "lr": 0.01}}


@pytest.fixture(scope="module")
def small_train():
    return digits_train().take(800)


@pytest.fixture(scope="module")
def clean_robust_accuracy(small_train):
    result = train(digits_recipe("clean", **FAST), small_train)
    return robust_accuracy(result.model, steps=10)


@pytest.mark.parametrize("method", ["pgd-at", "trades", "mart", "fgsm-rs"])
def test_each_robust_recipe_beats_clean_training(method, small_train, clean_robust_accuracy):
    result = train(digits_recipe(method, **FAST), small_train)
    robust = robust_accuracy(result.model, steps=10)
    assert clean_robust_accuracy < 0.1
    assert robust >= clean_robust_accuracy + 0.1, (method, robust, clean_robust_accuracy)
    assert result.history[-1]["holdout_robust"] > 0.1


def test_same_seed_same_weights_other_seed_differs(small_train):
    data = small_train.take(300)
    recipe = digits_recipe("pgd-at", optimizer={"epochs": 2}, data={"holdout": 50})
    first = train(recipe, data)
    second = train(recipe, data)
    other = train(recipe.with_overrides(seed=1), data)
    assert weights_equal(first.model, second.model)
    assert first.history == [dict(h, seconds=first.history[i]["seconds"]) for i, h in enumerate(second.history)]
    assert not weights_equal(first.model, other.model)


class _Crash(Exception):
    pass


class _CrashAfter(TrainingMonitor):
    """Dies right after the checkpoint of epoch ``n`` was written, like a kill between epochs."""

    def __init__(self, n: int) -> None:
        self.n = n

    def epoch(self, record):
        if record["epoch"] == self.n:
            raise _Crash


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path, small_train):
    data = small_train.take(300)
    recipe = digits_recipe("trades", optimizer={"epochs": 3}, data={"holdout": 50})
    whole = train(recipe, data, checkpoint_dir=tmp_path / "whole")

    ckpt = tmp_path / "broken"
    with pytest.raises(_Crash):
        train(recipe, data, checkpoint_dir=ckpt, monitor=_CrashAfter(2))
    # The checkpoint holds the epoch, the optimizer's moments and the schedule position.
    model = digits_cnn()
    optimizer = make_optimizer(recipe, model)
    state = load_checkpoint(ckpt, model, optimizer, torch.Generator(), recipe_digest=recipe.digest(), seed=0)
    assert state.epoch == 2 and state.step > 0 and len(state.history) == 2
    assert optimizer.state_dict()["state"], "optimizer moments were not saved"

    with pytest.raises(UsageError, match="--resume"):
        train(recipe, data, checkpoint_dir=ckpt)
    resumed = train(recipe, data, checkpoint_dir=ckpt, resume=True)
    assert resumed.resumed_from == 2
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert weights_equal(whole.model, resumed.model)


def test_resume_refuses_a_changed_recipe(tmp_path, small_train):
    data = small_train.take(200)
    recipe = digits_recipe("clean", optimizer={"epochs": 1}, data={"holdout": 50})
    train(recipe, data, checkpoint_dir=tmp_path)
    assert checkpoint_path(tmp_path).is_file()
    with pytest.raises(UsageError, match="different recipe"):
        train(recipe.with_overrides(epochs=2), data, checkpoint_dir=tmp_path, resume=True)


def test_guard_restores_best_weights_and_stops_on_collapse():
    recipe = digits_recipe("fgsm-rs", guard={"collapse_drop": 0.2, "keep": "best"})
    model = digits_cnn()
    good = {k: v.clone() for k, v in model.state_dict().items()}
    state = TrainingState(recipe_digest="x", seed=0, epoch=3, best_epoch=2, best_robust=0.7, best_weights=good)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    messages = []

    class Recorder(TrainingMonitor):
        def message(self, text):
            messages.append(text)

    record = {"holdout_robust": 0.45}  # 25 points under the best: a collapse
    _apply_guard(recipe, model, state, record, Recorder())
    assert state.finished and record["restored_epoch"] == 2 and state.restored_epoch == 2
    assert all(torch.equal(model.state_dict()[k], good[k]) for k in good)
    assert "catastrophic overfitting" in messages[0] and "restored the epoch 2 weights" in messages[0]

    # A small dip is not a collapse, and an improvement becomes the new best.
    state = TrainingState(recipe_digest="x", seed=0, epoch=3, best_epoch=2, best_robust=0.7, best_weights=good)
    _apply_guard(recipe, model, state, {"holdout_robust": 0.6}, Recorder())
    assert not state.finished and state.best_epoch == 2
    _apply_guard(recipe, model, state, {"holdout_robust": 0.75}, Recorder())
    assert state.best_epoch == 3 and state.best_robust == 0.75


def test_metrics_name_the_restored_epoch_only_after_a_restore():
    recipe = digits_recipe("fgsm-rs", guard={"collapse_drop": 0.2, "keep": "last"})
    model = digits_cnn()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    history = [{"epoch": e, "holdout_robust": r} for e, r in [(1, 0.5), (2, 0.7), (3, 0.6)]]
    # A message that is not a restore leaves the last epoch's weights in the bundle.
    state = TrainingState(recipe_digest="x", seed=0, epoch=3, best_epoch=2, best_robust=0.7, best_weights=weights,
                          history=history, events=["a note that is not a restore"])
    assert _metrics(recipe, state)["weights_from_epoch"] == 3
    state.restored_epoch = 2
    assert _metrics(recipe, state)["weights_from_epoch"] == 2


def test_schedules_and_augmentation():
    recipe = digits_recipe("pgd-at", threat={"ramp": 0.5}, optimizer={"lr": 0.1})
    assert training_eps(recipe, 0, 100) == pytest.approx(0.2 / 50)
    assert training_eps(recipe, 49, 100) == pytest.approx(0.2)
    assert training_eps(recipe, 99, 100) == pytest.approx(0.2)
    lrs = [learning_rate(recipe, s, 100) for s in range(100)]
    assert lrs[0] == 0 and max(lrs) == pytest.approx(0.1) and lrs[-1] < 0.01

    x = torch.zeros(5, 1, 8, 8)
    x[:, :, 4, 4] = 1.0
    shifted = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    assert torch.all(shifted.flatten(1).sum(1) == 1)  # the dot moved, nothing was lost or invented
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)
