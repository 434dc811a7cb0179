"""Benchmarks on a real local Ray cluster started here (2 CPUs): the same per-sample outcomes as the
local runner with the same shard layout, signed bundles verified by every worker, a worker killed
mid-shard retried, and a killed driver resumed without redoing finished shards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from test_bench_shards import comparable, signed_bundle

from bastion.cli import main
from bastion.data import load_data
from bastion.errors import ClusterError, VerificationError
from bastion.evaluation import benchmark, load_suite

ray = pytest.importorskip("ray", reason='the Ray tests need the extra: pip install "bastion[ray]"')

from bastion.distributed import ModelSource, RayExecutor, local_cluster  # noqa: E402
from bastion.distributed.ray_executor import FAULT_ENV  # noqa: E402

N, SHARD = 12, 4  # 3 shards


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(num_cpus=2) as address:
        yield address


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    return signed_bundle(tmp_path_factory.mktemp("signed"))


@pytest.fixture(scope="module")
def workload():
    # eps 0.1 on the non-robust model: some samples fall to FGSM, some to PGD (random start), some survive.
    return load_data("mnist", "test").take(N), load_suite("quick").with_eps([0.1])


@pytest.fixture(scope="module")
def local_report(signed, workload):
    bundle, public = signed
    data, suite = workload
    return benchmark(ModelSource.resolve(str(bundle), verify_key=public).load(), data, suite, shard_size=SHARD)


def test_ray_gives_the_local_runners_per_sample_outcomes_and_workers_verify(cluster, signed, workload,
                                                                            local_report):
    bundle, public = signed
    data, suite = workload
    source = ModelSource.resolve(str(bundle), verify_key=public)
    executor = RayExecutor(source, workers=2)
    report = benchmark(source.load(), data, suite, shard_size=SHARD, executor=executor)
    assert comparable(report) == comparable(local_report)
    robust = report["results"][0]["robust_indices"]
    assert 0 < len(robust) < N and all(a["broken_first"] for a in report["results"][0]["attacks"])

    execution = report["execution"]
    assert execution["executor"] == "ray" and execution["address"] == cluster
    assert execution["model_verified_by_workers"] is True and len(execution["workers"]) == 2
    assert [(s["start"], s["stop"], s["seed"]) for s in execution["shards"]] == [
        (s["start"], s["stop"], s["seed"]) for s in local_report["execution"]["shards"]]
    workers = {(w["host"], w["pid"]) for w in execution["workers"]}
    assert {(s["host"], s["pid"]) for s in execution["shards"]} <= workers
    assert os.getpid() not in {pid for _, pid in workers}  # they ran in the actors, not here


def test_workers_refuse_bytes_that_no_longer_verify(cluster, signed, workload, tmp_path):
    bundle, public = signed
    copy = tmp_path / "mnist-cnn"
    shutil.copytree(bundle, copy)
    source = ModelSource.resolve(str(copy), verify_key=public)
    model = source.load()  # the driver verified and loaded it; then the weights change on disk
    weights = copy / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    data, suite = workload
    with pytest.raises(VerificationError):
        benchmark(model, data, suite, shard_size=SHARD, executor=RayExecutor(source, workers=1))


def test_a_worker_killed_mid_shard_is_retried_and_the_run_finishes(cluster, signed, workload, local_report,
                                                                   tmp_path):
    bundle, public = signed
    data, suite = workload
    marker = tmp_path / "killed"
    source = ModelSource.resolve(str(bundle), verify_key=public)
    executor = RayExecutor(source, workers=1, env={FAULT_ENV: str(marker)})
    report = benchmark(source.load(), data, suite, shard_size=SHARD, executor=executor)
    assert marker.is_file(), "no worker was killed"
    assert comparable(report) == comparable(local_report)
    assert len(report["execution"]["shards"]) == N // SHARD


SLOW_SUITE = 'name = "slow"\nnorm = "linf"\neps = 0.02\n[[attack]]\nname = "pgd"\nsteps = 60\n'


def test_a_killed_driver_resumes_without_redoing_finished_shards(cluster, tmp_path):
    suite = tmp_path / "slow.toml"
    suite.write_text(SLOW_SUITE)
    out = tmp_path / "run"
    args = ["bench", "--model", "mnist-cnn", "--suite", str(suite), "--n", "8", "--shard-size", "2",
            "--executor", "ray", "--address", cluster, "--workers", "1", "--out", str(out)]
    driver = subprocess.Popen([sys.executable, "-c", "from bastion.cli import main; main()", *args, "--quiet"],
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    folder = out / "shards"
    deadline = time.time() + 240  # a loaded machine can take minutes to import torch and start an actor
    while time.time() < deadline and driver.poll() is None and not list(folder.glob("shard-*.json")):
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = {p.name: p.read_bytes() for p in folder.glob("shard-*.json")}
    assert 1 <= len(finished) < 4, "the driver should have been killed after its first shard"
    assert not (out / "report.json").exists()

    resumed = CliRunner().invoke(main, [*args, "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    report = json.loads((out / "report.json").read_text())
    shards = report["execution"]["shards"]
    before = {json.loads(raw)["shard"]["index"]: json.loads(raw)["worker"]["pid"] for raw in finished.values()}
    assert [s["from_checkpoint"] for s in shards] == [s["index"] in before for s in shards]
    assert all(s["pid"] == before[s["index"]] for s in shards if s["from_checkpoint"])
    assert {p.name: p.read_bytes() for p in folder.glob("shard-*.json") if p.name in finished} == finished
    assert json.loads(resumed.stdout)["execution"]["from_checkpoint"] == len(finished)

    local = CliRunner().invoke(main, [*args[:9], "--out", str(tmp_path / "local"), "--quiet"])
    assert local.exit_code == 0, local.output
    assert comparable(report) == comparable(json.loads((tmp_path / "local" / "report.json").read_text()))


@pytest.mark.parametrize("device, gpus, expected", [("auto", 0, False), ("auto", 2, True), ("cpu", 2, False),
                                                     ("cuda", 2, True), ("cuda", 0, None)])
def test_workers_take_one_gpu_each_where_the_device_asks_for_gpus(device, gpus, expected):
    cluster_with = SimpleNamespace(cluster_resources=lambda: {"CPU": 16.0, **({"GPU": float(gpus)} if gpus else {})})
    executor = RayExecutor(ModelSource.resolve("mnist-cnn"), device=device, cpus_per_worker=2)
    if expected is None:
        with pytest.raises(ClusterError, match="the Ray cluster has no GPU"):
            executor.use_gpu(cluster_with)
        return
    gpu = executor.use_gpu(cluster_with)
    assert gpu is expected
    options = executor.actor_options(gpu)
    assert options["num_gpus"] == (1 if expected else 0) and options["num_cpus"] == 2
    assert options["max_restarts"] >= 1 and options["max_task_retries"] >= 1 and "runtime_env" not in options


def test_an_address_where_no_cluster_listens_fails_at_once_in_one_line(tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for address, code, words in ((f"127.0.0.1:{port}", 2, "no Ray cluster answers there"),
                                 (f"ray://127.0.0.1:{port}", 2, "no Ray cluster answers there"),
                                 ("nonsense", 2, "use auto, HOST:PORT or ray://HOST:PORT")):
        result = CliRunner().invoke(main, ["bench", "--model", "mnist-cnn", "--suite", "quick", "--n", "4",
                                           "--executor", "ray", "--address", address, "--out", str(tmp_path / "o")])
        assert result.exit_code == code, (address, result.output)
        assert words in result.stderr and result.stderr.count("\n") == 1, result.stderr
