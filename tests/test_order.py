"""The adaptive attack order: black-box first where the gradient probe finds masking, the same worst case."""

from __future__ import annotations

import pytest
import torch
from bench_helpers import Quantized, linear_model, loaded, self_labelled, use_test_attacks, write_suite

from bastion.evaluation import BenchInputs, RunState, benchmark, load_suite, run_suite
from bastion.evaluation.runner import plan_order
from bastion.evaluation.state import Order

# Deterministic white-box attacks (no random start: on a zero-gradient model they move nothing),
# then a black-box one: a sample's outcome does not depend on which attacks ran before it.
WHITE_THEN_BLACK = ('\n[[attack]]\nname = "fgsm"\n\n[[attack]]\nname = "pgd"\nsteps = 5\nrandom_start = false\n'
                    '\n[[attack]]\nname = "test-random-search"\n')


@pytest.fixture(autouse=True)
def _test_attacks(monkeypatch):
    use_test_attacks(monkeypatch)


def run(model, tmp_path, body=WHITE_THEN_BLACK, *, eps="0.2", n=40, order=None):
    suite = load_suite(write_suite(tmp_path / "s.toml", body, eps=eps))
    data = self_labelled(linear_model(), n=n)
    inputs = BenchInputs(model, data.x, data.y, data.bounds, 4)
    return suite, run_suite(inputs, suite, run_indicators=False, order=order)


def test_masked_gradients_put_the_black_box_attack_first_with_the_same_worst_case(tmp_path):
    model = Quantized(linear_model())
    suite, adapted = run(model, tmp_path)
    assert adapted.order.adapted and adapted.order.gradients_masked
    assert adapted.order.attacks == ("test-random-search", "fgsm", "pgd")
    assert [u.attack for u in adapted.units] == ["test-random-search", "fgsm", "pgd"]
    assert {i.key for i in adapted.order.probe if i.fired} >= {"gradients"}
    assert "black-box attack(s) test-random-search ran first" in adapted.order.reason

    declared = Order(tuple(a.label for a in suite.attacks), adapted=False, reason="declared")
    _, fixed = run(model, tmp_path, order=declared)
    assert [u.attack for u in fixed.units] == ["fgsm", "pgd", "test-random-search"]
    broken = set(adapted.clean_correct) - set(adapted.standing(0.2))
    assert broken  # the black-box attack broke samples
    assert torch.equal(adapted.robust_mask(0.2), fixed.robust_mask(0.2))  # the same worst case per sample
    assert len(adapted.units[0].broken) == len(fixed.units[2].broken)  # who broke them first changed


def test_sound_gradients_keep_the_declared_order(tmp_path):
    _, state = run(linear_model(), tmp_path, eps="0.05")
    assert not state.order.adapted and not state.order.gradients_masked
    assert state.order.attacks == ("fgsm", "pgd", "test-random-search")
    assert "usable gradients" in state.order.reason
    assert [i.status for i in state.order.probe] == ["ok", "ok"]


def test_no_probe_where_it_could_change_nothing(tmp_path):
    white_only = '\n[[attack]]\nname = "fgsm"\n'
    suite = load_suite(write_suite(tmp_path / "w.toml", white_only))
    data = self_labelled(linear_model(), n=8)
    inputs = BenchInputs(Quantized(linear_model()), data.x, data.y, data.bounds, 4)
    order = plan_order(inputs, suite, tuple(range(8)), probe=False)
    assert order.probe == () and not order.adapted
    masked = plan_order(inputs, suite, tuple(range(8)), probe=True)  # the indicators want it anyway
    assert masked.gradients_masked and not masked.adapted and "has no black-box attack" in masked.reason


def test_the_report_says_the_order_was_adapted_and_why(tmp_path):
    suite = load_suite(write_suite(tmp_path / "s.toml", WHITE_THEN_BLACK, eps="0.2"))
    data = self_labelled(linear_model(), n=30)
    report = benchmark(loaded(Quantized(linear_model())), data, suite, out_dir=tmp_path / "out")
    assert report["order"]["adapted"] is True
    assert report["order"]["attacks"] == ["test-random-search", "fgsm", "pgd"]
    assert report["results"][0]["attacks"][0]["attack"] == "test-random-search"
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "**Attack order adapted:** The gradient probe found unusable gradients" in markdown
    found = {i["key"]: i for i in report["indicators"]}
    assert found["gradients"]["status"] == "fired"  # the probe's verdict, reported once
    assert found["black-box-beats-white-box"]["status"] == "fired"
    assert "ran before the white-box attacks" in found["black-box-beats-white-box"]["finding"]

    sound = benchmark(loaded(linear_model()), data, suite.with_eps([0.05]))
    assert sound["order"]["adapted"] is False and sound["order"]["attacks"] == ["fgsm", "pgd", "test-random-search"]


def test_resume_keeps_the_order_and_the_state_round_trips_it(tmp_path):
    _, state = run(Quantized(linear_model()), tmp_path)
    again = RunState.from_json(state.to_json())
    assert again.order == state.order and again == state


def test_a_masked_model_gets_the_full_square_budget(tmp_path):
    body = ('\n[[attack]]\nname = "fgsm"\n\n[[attack]]\nname = "square-check"\nn_queries = 60\n'
            'check_queries = 10\n')
    _, state = run(Quantized(linear_model()), tmp_path, body=body, n=12)
    square = next(u for u in state.units if u.attack == "square-check")
    assert state.units[0] is square
    assert square.params["check_queries"] == square.params["n_queries"] == 60


def test_a_sharded_run_chooses_one_order_for_every_shard(tmp_path):
    from bastion.evaluation.executors import LocalExecutor, run_sharded
    from bastion.evaluation.shards import ShardLayout

    suite = load_suite(write_suite(tmp_path / "s.toml", WHITE_THEN_BLACK, eps="0.2"))
    data = self_labelled(linear_model(), n=24)
    inputs = BenchInputs(Quantized(linear_model()), data.x, data.y, data.bounds, 4)
    sharded = run_sharded(inputs, suite, ShardLayout.contiguous(24, 8, seed=0), LocalExecutor())
    _, whole = run(Quantized(linear_model()), tmp_path, n=24)
    assert all(r.state.order == whole.order for r in sharded.results)  # planned once, on the whole run
    assert sharded.state.order.adapted and sharded.state.order == whole.order
