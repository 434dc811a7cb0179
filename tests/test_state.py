"""The typed run state: JSON round trip, version refusal, and merging shards into one run."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from bench_helpers import linear_model, make_state, make_unit, self_labelled, write_suite

from bastion.errors import UsageError
from bastion.evaluation import BenchInputs, RunState, benchmark, load_suite, run_suite
from bastion.evaluation.state import STATE_VERSION, Indicator

# Both attacks are deterministic per sample (no random start), so a sample's outcome does not
# depend on which other samples share its batch or its shard.
DETERMINISTIC = ('\n[[attack]]\nname = "fgsm"\n\n[[attack]]\nname = "pgd"\nsteps = 10\nrandom_start = false\n')


def test_json_round_trip_keeps_every_field():
    state = make_state([make_unit(0.1, "a", [1, 3], 5, loss_trace=(0.5, 0.25), trace_counts=(5, 4), queries=9),
                        make_unit(0.1, "b", [], 3, family="black-box", error="RuntimeError: no grad")],
                       n=6, clean_correct=[0, 1, 2, 3, 4])
    state = state.with_indicators([Indicator("k", "t", "ok", "f", "m", "a", {"x": [1]})], 0.5)
    again = RunState.from_json(state.to_json())
    assert again == state
    assert isinstance(again.units[0].broken, tuple) and again.units[1].error == "RuntimeError: no grad"
    assert json.loads(state.to_json())["version"] == STATE_VERSION


@pytest.mark.parametrize("text, words", [
    ('{"version": 1, "fingerprint": {}, "clean_correct": [], "units": [], "indicators": null}',
     "checkpoint from another bastion version"),
    ('{"version": 99}', "checkpoint from another bastion version"),
    ('[1, 2]', "checkpoint from another bastion version"),
    ('{not json', "unreadable checkpoint"),
    (f'{{"version": {STATE_VERSION}, "fingerprint": {{}}}}', "unreadable checkpoint"),
])
def test_other_versions_and_broken_text_are_refused_in_one_line(text, words):
    with pytest.raises(UsageError) as info:
        RunState.from_json(text, source="run/checkpoint.json")
    message = str(info.value)
    assert message.startswith("run/checkpoint.json: ") and words in message and "\n" not in message


def test_standing_and_robust_mask():
    state = make_state([make_unit(0.1, "a", [1], 5), make_unit(0.2, "a", [1, 4], 5)], n=6,
                       clean_correct=[0, 1, 2, 3, 4])
    assert state.standing(0.1) == [0, 2, 3, 4] and state.standing(0.2) == [0, 2, 3]
    assert state.robust_mask(0.2).tolist() == [True, False, True, True, False, False]
    assert state.robust_mask(0.2, 8).shape == (8,)


def test_an_old_checkpoint_gives_one_line_on_resume(tmp_path):
    model = linear_model()
    data = self_labelled(model, n=8)
    suite = load_suite(write_suite(tmp_path / "s.toml", DETERMINISTIC))
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.json").write_text(json.dumps({"version": 1, "fingerprint": {"seed": 0}, "units": []}))
    from bench_helpers import loaded

    with pytest.raises(UsageError, match="checkpoint from another bastion version"):
        benchmark(loaded(model), data, suite, out_dir=out, resume=True)


def without_timing(state: RunState) -> RunState:
    units = tuple(dataclasses.replace(u, seconds=0.0, loss_trace=tuple(round(v, 4) for v in u.loss_trace))
                  for u in state.units)
    return dataclasses.replace(state, units=units, indicators=None, indicator_seconds=0.0)


@pytest.mark.parametrize("eps", ["0.05", "[0.02, 0.05]"])
def test_merging_two_half_runs_gives_the_state_of_one_run_over_both(tmp_path, eps):
    model = linear_model()
    data = self_labelled(model, n=30)
    suite = load_suite(write_suite(tmp_path / "s.toml", DETERMINISTIC, eps=eps))
    inputs = BenchInputs(model, data.x, data.y, data.bounds, 4)
    whole = run_suite(inputs, suite, seed=2, run_indicators=False)
    assert any(u.broken for u in whole.units) and whole.standing(whole.fingerprint.eps[-1])  # not all or nothing

    first, second = inputs.shard(torch.arange(0, 13)), inputs.shard(torch.arange(13, 30))
    assert first.data_sha256 == inputs.data_sha256 and first.total == 30 and first.index.tolist() == list(range(13))
    halves = [run_suite(part, suite, seed=2, run_indicators=False) for part in (first, second)]
    assert halves[1].samples == tuple(range(13, 30))
    assert all(i >= 13 for u in halves[1].units for i in u.broken)  # outcomes are keyed by global index
    merged = halves[0].merge(halves[1])
    assert without_timing(merged) == without_timing(whole)
    assert merged == halves[1].merge(halves[0])  # the order of the shards does not matter
    for a, b in zip(merged.units, whole.units):
        assert a.loss_trace == pytest.approx(b.loss_trace, rel=1e-5)
        assert a.trace_counts == b.trace_counts and a.queries == b.queries
    assert RunState.from_json(merged.to_json()) == merged


def test_merge_refuses_overlapping_or_foreign_shards(tmp_path):
    model = linear_model()
    data = self_labelled(model, n=10)
    suite = load_suite(write_suite(tmp_path / "s.toml", DETERMINISTIC))
    inputs = BenchInputs(model, data.x, data.y, data.bounds, 4)
    a = run_suite(inputs.shard(torch.arange(0, 6)), suite, run_indicators=False)
    b = run_suite(inputs.shard(torch.arange(4, 10)), suite, run_indicators=False)
    with pytest.raises(UsageError, match="share 2 sample"):
        a.merge(b)
    other_seed = run_suite(inputs.shard(torch.arange(6, 10)), suite, seed=1, run_indicators=False)
    with pytest.raises(UsageError, match="different seed"):
        a.merge(other_seed)
    unfinished = dataclasses.replace(other_seed, fingerprint=a.fingerprint, units=other_seed.units[:1])
    with pytest.raises(UsageError, match="finished different attacks"):
        a.merge(unfinished)
