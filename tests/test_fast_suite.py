"""The fast suite against the standard suite on purpose-built models, at a tenth of both suites' budgets.

Both shipped compositions run with every budget (steps, queries) divided by ten, so the test takes
seconds; the full-budget comparison on 1,000 samples is `benchmarks/bench_vs_art.py --fast`.
"""

from __future__ import annotations

import math
import tomllib

import pytest
import tomli_w
import torch
from bench_helpers import Quantized, Saturated, linear_model, self_labelled

from bastion.attacks import get_attack
from bastion.catalog import resolve
from bastion.data import load_data
from bastion.evaluation import BenchInputs, load_suite, run_suite
from bastion.models import load_model
from bastion.threat import ThreatModel

BUDGETS = ("steps", "n_queries", "check_queries")
#: The fast suite may leave robust at most this share of the samples more than the standard suite.
TOLERANCE = 0.003


def scaled(name: str, tmp_path, divisor: int = 10):
    """The shipped suite ``name`` with every budget divided by ``divisor``."""
    doc = tomllib.loads(resolve("attacks", name).read_text())
    for attack in doc["attack"]:
        for key in BUDGETS:
            if key in attack:
                attack[key] = max(1, attack[key] // divisor)
    path = tmp_path / f"{name}.toml"
    path.write_text(tomli_w.dumps(doc))
    return load_suite(path)


def compare(model, x, y, tmp_path, eps: float):
    """(standard state, fast state) on the same samples at ``eps``."""
    inputs = BenchInputs(model, x, y, (0.0, 1.0), 10)
    states = [run_suite(inputs, scaled(name, tmp_path).with_eps([eps]), run_indicators=False)
              for name in ("standard", "fast")]
    return states


def assert_as_strong(standard, fast, eps, *, cheaper: float = 3):
    """The fast suite broke what the standard one did (within the tolerance), on ``cheaper`` times
    fewer model evaluations."""
    missed = set(fast.standing(eps)) - set(standard.standing(eps))
    allowed = math.ceil(TOLERANCE * standard.fingerprint.n)
    assert len(missed) <= allowed, f"the fast suite left {sorted(missed)} robust, the standard suite broke them"
    queries = [sum(u.queries for u in s.units) for s in (standard, fast)]
    assert queries[1] * cheaper < queries[0], queries


@pytest.fixture(scope="module")
def mnist():
    data = load_data("mnist").take(60)
    return load_model("mnist-cnn").module, data.x, data.y


@pytest.mark.slow
def test_as_strong_on_the_zoo_cnn(tmp_path, mnist):
    model, x, y = mnist
    standard, fast = compare(model, x, y, tmp_path, 0.1)
    assert 0 < len(standard.standing(0.1)) < len(standard.clean_correct)  # some robust, some broken
    assert_as_strong(standard, fast, 0.1)


@pytest.mark.slow
def test_as_strong_behind_round(tmp_path, mnist):
    class Rounded(torch.nn.Module):  # torch.round of the input: zero gradients, no BPDA
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(torch.round(x))

    model, x, y = mnist
    standard, fast = compare(Rounded(model).eval(), x, y, tmp_path, 0.3)
    assert standard.order.adapted and fast.order.adapted  # both ran their black-box attack first
    assert fast.units[0].params["check_queries"] == fast.units[0].params["n_queries"]  # full budget
    # Masked gradients leave the measurement to the black-box attack, whose full budget both suites
    # spend alike; the fast suite saves only on the white-box attacks that run after it.
    assert fast.units[0].queries == standard.units[0].queries
    white = [sum(u.queries for u in s.units[1:]) for s in (standard, fast)]
    assert white[1] * 3 < white[0], white
    assert_as_strong(standard, fast, 0.3, cheaper=1)


@pytest.mark.slow
def test_as_strong_on_saturated_logits(tmp_path, mnist):
    model, x, y = mnist
    standard, fast = compare(Saturated(model).eval(), x, y, tmp_path, 0.1)
    assert_as_strong(standard, fast, 0.1)


def test_on_a_tiny_masked_model_the_check_escalates_and_breaks_what_square_breaks(tmp_path):
    model = Quantized(linear_model())
    data = self_labelled(linear_model(), n=40)
    threat = ThreatModel(norm="linf", eps=0.2)
    (full,) = get_attack("square")(threat, n_queries=200).run(model, data.x, data.y)
    check = get_attack("square-check")(threat, n_queries=200, check_queries=20).for_masked_gradients()
    (escalated,) = check.run(model, data.x, data.y)
    assert escalated.success.sum() >= full.success.sum() > 0


def test_the_check_stops_early_on_a_sound_model():
    model = linear_model()
    data = self_labelled(model, n=30)
    logits = model(data.x)
    far = (logits.max(1).values - logits.topk(2, dim=1).values[:, 1]) > 0.2
    x, y = data.x[far], data.y[far]
    threat = ThreatModel(norm="linf", eps=0.01)  # far too small to break anything
    (result,) = get_attack("square-check")(threat, n_queries=500, check_queries=50).run(model, x, y)
    assert result.robust.all()
    assert result.queries <= (50 + 1) * len(x)  # the check, the clean margins; never the full 500
