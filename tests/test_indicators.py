"""Each attack-failure indicator fires on a model built to trigger it and stays silent on a sound one."""

from __future__ import annotations

import pytest
import torch
from bench_helpers import (Noisy, Quantized, Reversed, linear_model, loaded, make_state, make_unit, self_labelled,
                           use_test_attacks, write_suite)

from bastion.data import Dataset, load_data
from bastion.evaluation import benchmark, load_suite
from bastion.evaluation.indicators import check_tail_rise
from bastion.models import load_model

PGD = '\n[[attack]]\nname = "pgd"\nsteps = 10\n'



@pytest.fixture(autouse=True)
def _test_attacks(monkeypatch):
    use_test_attacks(monkeypatch)


def indicators(model, suite_body, tmp_path, *, eps="0.3", n=24):
    suite = load_suite(write_suite(tmp_path / "s.toml", suite_body, eps=eps))
    data = self_labelled(model, n=n)
    report = benchmark(loaded(model), data, suite)
    return {i["key"]: i for i in report["indicators"]}


def fired(found: dict) -> set[str]:
    return {k for k, i in found.items() if i["status"] == "fired"}


def test_silent_on_the_bundled_model_with_the_quick_suite():
    report = benchmark(load_model("mnist-cnn"), load_data("mnist").take(40), load_suite("quick"))
    found = {i["key"]: i for i in report["indicators"]}
    assert fired(found) == set()
    assert found["gradients"]["status"] == found["unbounded-attack-fails"]["status"] == "ok"
    assert found["unstable-predictions"]["status"] == found["loss-not-increasing"]["status"] == "ok"
    for indicator in report["indicators"]:
        assert indicator["title"] and indicator["finding"] and indicator["meaning"] and indicator["advice"]


def test_silent_on_a_sound_tiny_model(tmp_path):
    found = indicators(linear_model(), PGD + '\n[[attack]]\nname = "test-random-search"\n', tmp_path, eps="0.05")
    assert fired(found) == set()
    assert found["black-box-beats-white-box"]["status"] == "ok"


def test_zero_gradients_fire(tmp_path):
    found = indicators(Quantized(linear_model()), PGD, tmp_path)
    assert {"gradients", "loss-not-increasing", "unbounded-attack-fails"} <= fired(found)
    assert found["gradients"]["details"]["zero_gradient"]["clean"] == 24


def test_unavailable_gradients_fire(tmp_path):
    class Detached(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = linear_model()

        def forward(self, x):
            return self.inner(x.detach())

    found = indicators(Detached(), PGD, tmp_path)
    assert "gradients" in fired(found)
    assert "No input gradient" in found["gradients"]["finding"]


def test_randomized_model_fires(tmp_path):
    torch.manual_seed(0)
    found = indicators(Noisy(linear_model()), PGD, tmp_path)
    assert "unstable-predictions" in fired(found)


def test_gradient_pointing_the_wrong_way_fires(tmp_path):
    found = indicators(Reversed(linear_model()), PGD, tmp_path)
    assert {"loss-not-increasing", "unbounded-attack-fails"} <= fired(found)
    assert "gradients" not in fired(found)  # the gradient exists; it is just wrong


def test_loss_still_rising_fires_when_steps_are_too_small(tmp_path):
    slow = '\n[[attack]]\nname = "pgd"\nsteps = 20\nstep_size = 0.00001\nrandom_start = false\n'
    model = linear_model()
    data = self_labelled(model, n=60)
    logits = model(data.x)
    margin = logits.max(1).values - logits.topk(2, dim=1).values[:, 1]
    far = margin > 0.05  # no sample close enough to the boundary to be fooled by tiny steps
    data = Dataset("far", data.x[far], data.y[far], 4)
    suite = load_suite(write_suite(tmp_path / "s.toml", slow))
    found = {i["key"]: i for i in benchmark(loaded(model), data, suite)["indicators"]}
    assert "loss-still-rising" in fired(found)
    assert found["loss-still-rising"]["details"]["rising"][0]["attack"] == "pgd"


def test_loss_trace_rule():
    def state(trace):
        return make_state([make_unit(0.3, "a", family="white-box", loss_trace=tuple(trace))])

    assert check_tail_rise(state([0.0, 1.0, 2.0, 3.0, 3.5, 3.8, 3.9, 4.0, 4.0, 4.0])).status == "ok"
    assert check_tail_rise(state([float(i) for i in range(10)])).status == "fired"
    assert check_tail_rise(state([1.0, 2.0])).status == "skipped"


def test_black_box_beating_white_box_fires(tmp_path):
    body = PGD + '\n[[attack]]\nname = "test-random-search"\n'
    found = indicators(Quantized(linear_model()), body, tmp_path, eps="0.2", n=40)
    assert "black-box-beats-white-box" in fired(found)


def test_accuracy_rising_with_eps_fires(tmp_path):
    found = indicators(linear_model(), '\n[[attack]]\nname = "test-small-eps-only"\n', tmp_path,
                       eps="[0.1, 0.3]", n=40)
    assert "accuracy-rises-with-eps" in fired(found)


def test_unconfirmed_claims_fire(tmp_path):
    found = indicators(linear_model(), '\n[[attack]]\nname = "test-liar"\n', tmp_path)
    assert "unconfirmed-claims" in fired(found)


@pytest.mark.parametrize("key", ["accuracy-rises-with-eps", "black-box-beats-white-box"])
def test_checks_that_need_more_of_the_suite_say_they_were_skipped(tmp_path, key):
    found = indicators(linear_model(), PGD, tmp_path)
    assert found[key]["status"] == "skipped" and found[key]["finding"]


def test_black_box_tolerance_separates_isolated_samples_from_masking():
    from bastion.evaluation import load_suite
    from bastion.evaluation.indicators import check_black_box

    def state(square_broke: int, standing: int = 899):
        white = [make_unit(0.3, name, family="white-box", standing=1000, broken=[0])
                 for name in ("apgd-ce", "apgd-t", "fab-t")]
        square = make_unit(0.3, "square", family="black-box", standing=standing,
                           broken=list(range(1, square_broke + 1)))
        return make_state([*white, square], n=1000)

    suite = load_suite("standard")
    isolated = check_black_box(state(1), suite)
    assert isolated.status == "ok" and "1 of the 899" in isolated.finding
    assert isolated.details["broken_only_by_black_box"] == {"0.3": [1]}
    assert check_black_box(state(4), suite).status == "ok"      # 0.44%: within 0.5%
    assert check_black_box(state(5), suite).status == "fired"   # 0.56%
    assert check_black_box(state(1, standing=40), suite).status == "fired"  # 2.5% of a small run
    assert check_black_box(state(0), suite).status == "ok"
