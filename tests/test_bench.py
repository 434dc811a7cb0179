"""Worst-case aggregation, the runner's contract with attacks, checkpoints and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from bench_helpers import Spy, linear_model, loaded, make_state, make_unit, self_labelled, use_test_attacks, write_suite
from scipy.stats import beta

from bastion.attacks.fgsm import FGSM
from bastion.attacks.pgd import PGD
from bastion.errors import UsageError
from bastion.evaluation import benchmark, load_suite
from bastion.evaluation.report import build_report

FGSM_PGD = '\n[[attack]]\nname = "fgsm"\n\n[[attack]]\nname = "pgd"\nsteps = 10\n'
RUN = {"model": {"name": "m", "source": "m", "sha256": "0"}, "data": {"name": "d", "n": 6, "sha256": "0"}}



@pytest.fixture(autouse=True)
def _test_attacks(monkeypatch):
    use_test_attacks(monkeypatch)


def unit(eps, attack, broken, standing, family="white-box"):
    return make_unit(eps, attack, broken, standing, family)


def hand_made_state():
    # Six samples, classes 0,0,0,1,1,1; sample 5 is misclassified clean.
    return make_state([unit(0.1, "a", [1], 5), unit(0.1, "b", [3], 4),
                       unit(0.2, "a", [1, 4], 5), unit(0.2, "b", [0], 3)], n=6, clean_correct=[0, 1, 2, 3, 4])


class _Suite:
    name, norm, epsilons = "hand", "linf", (0.1, 0.2)

    def to_dict(self):
        return {"name": self.name}


def test_worst_case_aggregation_on_hand_made_outcomes():
    state = hand_made_state()
    assert state.standing(0.1) == [0, 2, 4]
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    report = build_report(state, _Suite(), y, 2, run=RUN)
    at_small, at_large = report["results"]
    # Fractions are written to 6 decimals (bastion.evaluation.report_format).
    assert report["summary"]["clean_accuracy"] == round(5 / 6, 6)
    assert at_small["robust_indices"] == [0, 2, 4]
    assert at_small["robust_accuracy"] == round(3 / 6, 6)
    # At 0.2 the attacks alone leave {2, 3}; sample 3 was broken at 0.1, which also counts at 0.2.
    assert at_large["robust_accuracy_raw"] == round(2 / 6, 6)
    assert at_large["robust_indices"] == [2]
    assert at_large["broken_at_smaller_eps"] == 1
    assert [(a["attack"], a["broken_first"]) for a in at_large["attacks"]] == [("a", 2), ("b", 1)]
    classes = {c["class"]: c for c in at_large["per_class"]}
    assert classes[0]["clean_accuracy"] == 1.0 and classes[0]["robust_accuracy"] == round(1 / 3, 6)
    assert classes[1]["clean_accuracy"] == round(2 / 3, 6) and classes[1]["robust_accuracy"] == 0.0
    # The gap's interval: Newcombe's square-and-add of the two classes' Clopper-Pearson bounds (1/3 and 0/3).
    one_of_three, none_of_three = (beta.ppf(0.025, 1, 3), beta.ppf(0.975, 2, 2)), (0.0, beta.ppf(0.975, 1, 3))
    low = 1 / 3 - math.hypot(1 / 3 - one_of_three[0], none_of_three[1])
    high = 1 / 3 + math.hypot(one_of_three[1] - 1 / 3, 0.0)
    assert at_large["class_gap"]["robust"] == {"gap": round(1 / 3, 6), "best_class": 0, "worst_class": 1,
                                               "gap_ci": {"low": pytest.approx(low, abs=1e-6),
                                                          "high": pytest.approx(high, abs=1e-6)}}
    assert classes[0]["robust_accuracy_ci"]["k"] == 1 and classes[0]["robust_accuracy_ci"]["n"] == 3
    assert report["summary"]["robust_accuracy"] == round(1 / 6, 6)


def test_each_attack_only_sees_the_samples_still_standing(tmp_path):
    model = linear_model()
    data = self_labelled(model, n=30)
    body = '\n[[attack]]\nname = "fgsm"\n\n[[attack]]\nname = "test-spy"\n'
    suite = load_suite(write_suite(tmp_path / "s.toml", body, eps="0.15"))
    Spy.seen.clear()
    report = benchmark(loaded(model), data, suite)
    fgsm = report["results"][0]["attacks"][0]
    assert 0 < fgsm["broken_first"] < 30
    assert Spy.seen == [30 - fgsm["broken_first"]]
    assert report["summary"]["robust_accuracy"] == round((30 - fgsm["broken_first"]) / 30, 6)


def test_claims_that_do_not_recheck_are_not_counted(tmp_path):
    model = linear_model()
    suite = load_suite(write_suite(tmp_path / "s.toml", '\n[[attack]]\nname = "test-liar"\n'))
    report = benchmark(loaded(model), self_labelled(model, n=10), suite)
    assert report["summary"]["robust_accuracy"] == 1.0
    assert report["results"][0]["attacks"][0]["unconfirmed"] == 10


def comparable(report: dict) -> dict:
    """A report without the things that differ between two identical runs: timings and the date."""
    report = json.loads(json.dumps(report))
    report.pop("created"), report.pop("timing"), report.pop("command")
    for result in report["results"]:
        for attack in result["attacks"]:
            attack.pop("seconds")
    return report


@pytest.fixture(scope="module")
def mnist_small():
    """A tiny model with self-labelled data: resume logic does not depend on the model's size."""
    model = linear_model()
    return loaded(model), self_labelled(model, n=24)


def test_resume_after_interruption_gives_the_same_report(tmp_path, monkeypatch, mnist_small):
    model, data = mnist_small
    suite = load_suite(write_suite(tmp_path / "s.toml", FGSM_PGD, eps="[0.05, 0.1]"))
    reference = benchmark(model, data, suite, out_dir=tmp_path / "straight", seed=3)

    out = tmp_path / "interrupted"
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(self.name)
        raise KeyboardInterrupt

    monkeypatch.setattr(PGD, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        benchmark(model, data, suite, out_dir=out, seed=3)
    checkpoint = json.loads((out / "checkpoint.json").read_text())
    assert [u["attack"] for u in checkpoint["units"]] == ["fgsm"]
    assert not (out / "report.json").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    monkeypatch.undo()
    fgsm_runs = []
    original = FGSM.run

    def counted(self, *args, **kwargs):
        fgsm_runs.append(self.threat.single)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FGSM, "run", counted)
    resumed = benchmark(model, data, suite, out_dir=out, seed=3, resume=True)
    assert fgsm_runs == [0.1]  # the eps-0.05 FGSM run finished before the interruption and is not redone
    assert comparable(resumed) == comparable(reference)
    assert comparable(json.loads((out / "report.json").read_text())) == comparable(
        json.loads((tmp_path / "straight" / "report.json").read_text()))


def test_resume_refuses_a_checkpoint_from_other_settings(tmp_path, mnist_small):
    model, data = mnist_small
    suite = load_suite(write_suite(tmp_path / "s.toml", FGSM_PGD))
    benchmark(model, data, suite, out_dir=tmp_path / "run", seed=0)
    with pytest.raises(UsageError, match="different seed"):
        benchmark(model, data, suite, out_dir=tmp_path / "run", seed=1, resume=True)
    (tmp_path / "run" / "checkpoint.json").write_text("{not json")
    with pytest.raises(UsageError, match="unreadable checkpoint"):
        benchmark(model, data, suite, out_dir=tmp_path / "run", seed=0, resume=True)


def test_same_seed_same_report(tmp_path, mnist_small):
    model, data = mnist_small
    suite = load_suite(write_suite(tmp_path / "s.toml", FGSM_PGD, eps="0.1"))
    first = benchmark(model, data, suite, seed=5)
    assert comparable(first) == comparable(benchmark(model, data, suite, seed=5))
