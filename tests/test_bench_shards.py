"""Sharded benchmarks without Ray: the layout, the per-shard seeds, shard checkpoints and resume,
the merged report, and the CLI options (their errors too, Ray missing included)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys

import pytest
from bench_helpers import linear_model, loaded, self_labelled, write_suite
from click.testing import CliRunner

from bastion.access.keys import generate_private_key, write_keypair
from bastion.access.signing import sign_model
from bastion.attacks import ATTACKS
from bastion.attacks.pgd import PGD
from bastion.cli import main
from bastion.errors import UsageError
from bastion.evaluation import BenchInputs, benchmark, load_suite
from bastion.evaluation.executors import LocalExecutor, run_sharded
from bastion.evaluation.shards import ShardLayout, shard_seed
from bastion.models.zoo import zoo_path

RANDOM = '\n[[attack]]\nname = "fgsm"\n\n[[attack]]\nname = "pgd"\nsteps = 10\n'  # PGD starts at random


def signed_bundle(root):
    """A signed copy of the zoo's mnist-cnn bundle under ``root``, and the public key it verifies under."""
    bundle = root / "mnist-cnn"
    shutil.copytree(zoo_path("mnist-cnn"), bundle)
    key = generate_private_key("ec-p256")
    _, public = write_keypair(root / "release", key)
    sign_model(bundle, key)
    return bundle, public


def comparable(report: dict) -> dict:
    """A report without what differs between equivalent runs (times, where shards ran)."""
    report = json.loads(json.dumps(report))
    for key in ("created", "timing", "command", "execution", "files"):
        report.pop(key, None)
    for result in report["results"]:
        for attack in result["attacks"]:
            attack.pop("seconds")
    for indicator in report["indicators"]:
        indicator["details"].pop("seconds", None)
    return report


def test_shard_seeds_follow_one_documented_derivation():
    assert shard_seed(7, 0) == 7  # one shard is the unsharded run
    seeds = [shard_seed(7, k) for k in range(1, 200)]
    assert len(set(seeds)) == len(seeds) and 7 not in seeds and all(0 <= s < 2 ** 32 for s in seeds)
    # Pinned: a checkpoint written by one version must resume with the same seeds in the next.
    assert shard_seed(0, 1) == 3131402660 and shard_seed(0, 2) == 1577169849


def test_layout_is_contiguous_and_recorded():
    layout = ShardLayout.contiguous(10, 4, seed=5)
    assert [(s.start, s.stop) for s in layout.shards] == [(0, 4), (4, 8), (8, 10)]
    assert [s.seed for s in layout.shards] == [shard_seed(5, k) for k in range(3)] and layout.n == 10
    with pytest.raises(UsageError, match="--shard-size must be positive"):
        ShardLayout.contiguous(10, 0, seed=0)


class SeedSpy(PGD):
    """PGD that records the seed it was built with."""

    name = "test-seed-spy"
    seeds: list[int] = []

    def __init__(self, threat, **kwargs):
        super().__init__(threat, **kwargs)
        SeedSpy.seeds.append(self.seed)


def test_each_shard_attacks_with_its_own_seed_and_records_the_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(ATTACKS, SeedSpy.name, SeedSpy)
    model = linear_model()
    data = self_labelled(model, n=12)
    suite = load_suite(write_suite(tmp_path / "s.toml", '\n[[attack]]\nname = "test-seed-spy"\nsteps = 5\n'))
    SeedSpy.seeds = []  # loading the suite built one to check its parameters
    report = benchmark(loaded(model), data, suite, seed=3, shard_size=5)
    assert SeedSpy.seeds == [3, shard_seed(3, 1), shard_seed(3, 2)]
    assert report["results"][0]["attacks"][0]["params"]["seed"] == 3  # the run's seed, as in an unsharded run
    shards = report["execution"]["shards"]
    assert [(s["start"], s["stop"], s["seed"]) for s in shards] == [(0, 5, 3), (5, 10, shard_seed(3, 1)),
                                                                     (10, 12, shard_seed(3, 2))]
    assert report["execution"]["executor"] == "local" and report["execution"]["shard_size"] == 5
    assert all(s["pid"] > 0 and s["host"] and s["device"] == "cpu" and not s["from_checkpoint"] for s in shards)


def test_one_shard_gives_the_unsharded_report(tmp_path):
    model = linear_model()
    data = self_labelled(model, n=16)
    suite = load_suite(write_suite(tmp_path / "s.toml", RANDOM, eps="[0.05, 0.1]"))
    whole = benchmark(loaded(model), data, suite, seed=1)
    one = benchmark(loaded(model), data, suite, seed=1, shard_size=16)
    assert len(one["execution"]["shards"]) == 1 and "execution" not in whole
    assert comparable(one) == comparable(whole)


def test_shards_merge_into_one_report_with_indicators_once(tmp_path):
    model = linear_model()
    data = self_labelled(model, n=20)
    suite = load_suite(write_suite(tmp_path / "s.toml", RANDOM, eps="0.1"))
    report = benchmark(loaded(model), data, suite, seed=1, shard_size=6, out_dir=tmp_path / "run")
    result = report["results"][0]
    attacks = result["attacks"]
    assert attacks[0]["attacked"] == 20 and attacks[1]["attacked"] == 20 - attacks[0]["broken_first"]
    robust = set(result["robust_indices"])
    broken = {i for a in attacks for i in a["broken_indices"]}
    assert robust | broken == set(range(20)) and not robust & broken and 0 < len(robust) < 20
    assert sum(c["n"] for c in result["per_class"]) == 20 and len(report["indicators"]) == 8
    assert sorted(p.name for p in (tmp_path / "run" / "shards").iterdir()) == [
        f"shard-0000{k}.json" for k in range(4)]


class StopAfter:
    """A local executor interrupted (as by Ctrl-C) once ``count`` shards came back."""

    name = "local"

    def __init__(self, count: int) -> None:
        self.inner, self.count, self.ran = LocalExecutor(), count, []

    def run(self, inputs, suite, shards, **options):
        for result in self.inner.run(inputs, suite, shards, **options):
            self.ran.append(result.shard.index)
            yield result
            if len(self.ran) == self.count:
                raise KeyboardInterrupt

    def describe(self):
        return self.inner.describe()


def test_resume_skips_finished_shards_and_gives_the_same_state(tmp_path):
    model = linear_model()
    data = self_labelled(model, n=20)
    suite = load_suite(write_suite(tmp_path / "s.toml", RANDOM, eps="0.1"))
    inputs = BenchInputs(model, data.x, data.y, data.bounds, 4)
    layout = ShardLayout.contiguous(20, 6, seed=2)
    folder = tmp_path / "shards"
    with pytest.raises(KeyboardInterrupt):
        run_sharded(inputs, suite, layout, StopAfter(2), seed=2, checkpoint_dir=folder)
    saved = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(saved) == ["shard-00000.json", "shard-00001.json"]

    again = StopAfter(99)
    resumed = run_sharded(inputs, suite, layout, again, seed=2, checkpoint_dir=folder, resume=True)
    assert again.ran == [2, 3]  # only the unfinished shards ran
    assert [r.from_checkpoint for r in resumed.results] == [True, True, False, False]
    assert all(folder.joinpath(name).read_bytes() == data for name, data in saved.items())
    straight = run_sharded(inputs, suite, layout, LocalExecutor(), seed=2)

    def outcomes(run):
        units = tuple(dataclasses.replace(u, seconds=0.0) for u in run.state.units)
        return dataclasses.replace(run.state, units=units, indicator_seconds=0.0)
    assert outcomes(resumed) == outcomes(straight)


def test_resume_refuses_shards_of_another_layout_or_run(tmp_path):
    model = linear_model()
    data = self_labelled(model, n=12)
    suite = load_suite(write_suite(tmp_path / "s.toml", RANDOM, eps="0.1"))
    out = tmp_path / "run"
    benchmark(loaded(model), data, suite, shard_size=4, out_dir=out)
    with pytest.raises(UsageError, match="--shard-size it was made with") as info:
        benchmark(loaded(model), data, suite, shard_size=3, out_dir=out, resume=True)
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match="different seed"):
        benchmark(loaded(model), data, suite, shard_size=4, out_dir=out, resume=True, seed=9)
    (out / "shards" / "shard-00001.json").write_text("{not json")
    with pytest.raises(UsageError, match="unreadable shard checkpoint"):
        benchmark(loaded(model), data, suite, shard_size=4, out_dir=out, resume=True)
    # Without --resume a run starts over and leaves only its own shard files.
    (out / "shards" / "shard-00042.json").write_text("{}")
    benchmark(loaded(model), data, suite, shard_size=6, out_dir=out)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-00000.json", "shard-00001.json"]


def bench(*args):
    return CliRunner().invoke(main, ["bench", "--model", "mnist-cnn", "--suite", "quick", *args])


def test_cli_shard_size_runs_locally_and_reports_the_layout(tmp_path):
    result = bench("--n", "6", "--eps", "0.1", "--shard-size", "4", "--out", str(tmp_path / "o"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["execution"]["shards"] == 2 and summary["execution"]["executor"] == "local"
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [(s["start"], s["stop"]) for s in report["execution"]["shards"]] == [(0, 4), (4, 6)]
    printed = bench("--n", "6", "--eps", "0.1", "--shard-size", "4", "--out", str(tmp_path / "o"), "--resume")
    assert printed.exit_code == 0, printed.output
    assert "2 from the checkpoint" in printed.stdout and "resuming: 2 of 2 shard(s)" in printed.stderr
    fresh = bench("--n", "6", "--eps", "0.1", "--shard-size", "4", "--out", str(tmp_path / "p"))
    assert fresh.exit_code == 0, fresh.output
    assert "shard 0 (samples 0-3): " in fresh.stderr and "shard 1 (samples 4-5): " in fresh.stderr


def test_cli_verify_key_loads_only_a_bundle_that_verifies(tmp_path):
    bundle, public = signed_bundle(tmp_path)
    args = ["bench", "--model", str(bundle), "--suite", "quick", "--n", "4", "--quiet"]
    good = CliRunner().invoke(main, [*args, "--verify-key", str(public), "--out", str(tmp_path / "a")])
    assert good.exit_code == 0, good.output
    _, other = write_keypair(tmp_path / "other", generate_private_key("ec-p256"))
    bad = CliRunner().invoke(main, [*args, "--verify-key", str(other), "--out", str(tmp_path / "b")])
    assert bad.exit_code == 1 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1, bad.output
    assert not (tmp_path / "b" / "report.json").exists()


@pytest.mark.parametrize("args, words", [
    (["--shard-size", "0"], "--shard-size must be positive"),
    (["--address", "auto"], "--address and --workers need --executor ray"),
    (["--workers", "2"], "--address and --workers need --executor ray"),
    (["--executor", "ray", "--workers", "0"], "--workers must be positive"),
])
def test_cli_bad_sharding_options_are_one_line_and_exit_2(tmp_path, args, words):
    result = bench("--n", "4", "--out", str(tmp_path / "o"), *args)
    assert result.exit_code == 2, result.output
    assert words in result.stderr and result.stderr.count("\n") == 1


def test_cli_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    result = bench("--n", "4", "--executor", "ray", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2, result.output
    assert result.stderr == 'error: --executor ray needs Ray, an optional extra: pip install "bastion[ray]"\n'
    assert not (tmp_path / "o").exists()  # it said so before doing any work
