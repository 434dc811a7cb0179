"""Training under torchrun: two gloo processes train one model, survive kill -9 of a rank, and AWP,
weight averaging and the held-out guard stay identical on every rank.

Each job here is a real launch (torch's elastic agent, two Python processes, a gloo process group
on 127.0.0.1), on the 8x8 digits from an .npz file so the ranks start without scikit-learn.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from click.testing import CliRunner
from filelock import FileLock  # a dependency of torch
from safetensors.torch import load_file

from bastion.cli import main
from bastion.defenses.training import recipe_from_dict
from bastion.defenses.training.distributed import Ranks, per_process_batch
from bastion.defenses.training.launcher import torchrun_args
from bastion.errors import ConfigError, UsageError
from training_helpers import digits_raw, digits_train

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
EPOCHS = 5

#: TRADES with a 1-step inner attack, weight averaging and AWP after one plain epoch: every piece that
#: must stay identical across ranks is on.
RECIPE = digits_raw("trades", attack={"steps": 1, "step_size": 1.0}, data={"holdout": 50},
                    optimizer={"epochs": EPOCHS, "batch_size": 64}, average={"decay": 0.9},
                    awp={"gamma": 0.01, "warmup_epochs": 1})


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]), "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


@pytest.fixture(scope="session")
def job(tmp_path_factory):
    """A folder with the data and recipe, and the reference job run in it (``ddp_each_rank.py``);
    run once even when pytest-xdist spreads the tests that read it over several workers."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's folder is in the session's one
        shared = shared.parent
    folder = shared / "ddp-reference"
    with FileLock(str(shared / "ddp-reference.lock")):
        if not (folder / "reference" / "done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            (folder / "reference").mkdir(parents=True)
            data = digits_train().take(300)
            np.savez(folder / "digits300.npz", x=data.x.numpy(), y=data.y.numpy())
            (folder / "recipe.toml").write_text(tomli_w.dumps(RECIPE))
            run = subprocess.run(_torchrun(str(TESTS / "ddp_each_rank.py"), str(folder / "recipe.toml"),
                                           str(folder / "digits300.npz"), str(folder / "reference")),
                                 env=_env(), capture_output=True, timeout=300)
            assert run.returncode == 0, run.stderr.decode()[-3000:]
            (folder / "reference" / "done").touch()
    return folder


def _weights(folder: Path, rank: int, kind: str) -> dict[str, torch.Tensor]:
    return load_file(folder / "reference" / f"rank{rank}-{kind}.safetensors")


def _gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ---- a whole job: identical ranks, kill -9, resume -------------------------------------------

def _rank_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    """The pid of the launcher's child process that runs ``rank`` (from its environment)."""
    try:
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    except OSError:
        return None
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


def _kill_rank_after_checkpoint(args: list[str], checkpoint: Path, rank: int, log: Path) -> tuple[int, str]:
    """Start the job ``args`` and kill -9 its ``rank`` once the first checkpoint exists; the launcher's
    exit status and stderr."""
    with open(log, "wb") as stderr:
        launcher = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr, env=_env(),
                                    cwd=checkpoint.parent.parent)
    try:
        deadline = time.monotonic() + 120
        pid = None
        while not checkpoint.exists() and time.monotonic() < deadline and launcher.poll() is None:
            pid = pid or _rank_pid(launcher, rank)
            time.sleep(0.01)
        assert launcher.poll() is None, f"the job ended (exit {launcher.returncode}) before the kill: {log.read_text()}"
        os.kill(pid or _rank_pid(launcher, rank), signal.SIGKILL)
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    return launcher.returncode, log.read_text()


def test_two_ranks_train_one_model_and_resume_after_kill_9_to_the_same_weights(job):
    # The reference job, uninterrupted: the weights and their average (what ships) are the same
    # bits on both ranks.
    shipped, raw = _weights(job, 0, "shipped"), _weights(job, 0, "raw")
    assert _gap(raw, _weights(job, 1, "raw")) == 0
    assert _gap(shipped, _weights(job, 1, "shipped")) == 0
    assert _gap(raw, shipped) > 0, "no averaging happened"

    # `bastion train --nproc 2`, rank 1 killed -9 after the first checkpoint: the launcher stops the job.
    common = ["--recipe", "recipe.toml", "--data", "digits300.npz", "--out", "killed"]
    checkpoint = job / "killed.ckpt" / "last.pt"
    bastion_train = [sys.executable, "-c", "from bastion.cli import main; main()", "train"]
    status, stderr = _kill_rank_after_checkpoint([*bastion_train, *common, "--nproc", "2", "--quiet"], checkpoint,
                                                 1, job / "killed.log")
    assert status == 130, stderr
    assert "rerun with --resume" in stderr and "Traceback" not in stderr, stderr
    assert checkpoint.exists() and not (job / "killed" / "model.safetensors").exists()

    # Plain torchrun resumes it, from the last finished epoch, to the reference's weights exactly.
    resumed = subprocess.run(_torchrun("-m", "bastion.train", *common, "--resume", "--json"), env=_env(),
                             capture_output=True, timeout=300, cwd=job)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    summary = json.loads(resumed.stdout)  # rank 0 alone reports
    assert 1 <= summary["resumed_from_epoch"] < EPOCHS and summary["metrics"]["epochs_run"] == EPOCHS
    assert summary["metrics"]["distributed"] == {"processes": 2, "backend": "gloo", "batch_per_process": 32}
    assert summary["metrics"]["awp_steps"] == (EPOCHS - 1) * 4  # 125 samples per rank, 32 a step
    bundle = load_file(job / "killed" / "model.safetensors")
    assert bundle.keys() == shipped.keys() and _gap(bundle, shipped) == 0, "resumed weights differ"
    assert not (job / "killed.ckpt").exists()


# ---- AWP and the guard across ranks, step by step --------------------------------------------

def test_awp_perturbs_along_the_gradient_of_the_whole_batch(job):
    alone = _weights(job, 0, "alone")
    ddp = _weights(job, 0, "ddp")
    # Both ranks hold the same bits after the step, and it is one process's AWP step on the whole
    # batch up to float rounding (two half-batch means averaged vs one mean).
    assert _gap(ddp, _weights(job, 1, "ddp")) == 0
    assert _gap(ddp, alone) < 1e-6
    # Perturbing along each shard's own gradient is another step, far outside that rounding.
    assert _gap(_weights(job, 0, "local"), alone) > 100 * max(_gap(ddp, alone), 1e-8)


def test_the_guard_decision_of_rank_0_reaches_every_rank(job):
    rank0, rank1 = (json.loads((job / "reference" / f"rank{r}-guard.json").read_text()) for r in (0, 1))
    assert rank1 == rank0, "the ranks applied different guard decisions"
    restore = rank0["restore"]
    assert restore["finished"] and restore["restored"] == 2 and restore["weights_are_old_best"]
    assert "catastrophic overfitting" in restore["events"][0]
    best = rank0["best"]
    assert not best["finished"] and best["best_epoch"] == 3 and best["best_is_current"]


# ---- the command line, without starting processes ----------------------------------------

@pytest.mark.parametrize("args,env,expected", [
    (["--nproc", "2", "--recipe", "ODD"], {}, "'optimizer.batch_size' (63) is the global batch"),
    (["--nproc", "2", "--recipe", "GOOD"], {"WORLD_SIZE": "2", "RANK": "0"}, "--nproc starts the launcher"),
    (["--nnodes", "2", "--recipe", "GOOD"], {}, "--nnodes 2 needs --rdzv-endpoint"),
])
def test_launcher_options_refuse_bad_input_in_one_line(tmp_path, monkeypatch, args, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    recipes = {"GOOD": digits_raw("clean"), "ODD": digits_raw("clean", optimizer={"batch_size": 63})}
    for label, raw in recipes.items():
        (tmp_path / f"{label}.toml").write_text(tomli_w.dumps(raw))
    args = [str(tmp_path / f"{a}.toml") if a in recipes else a for a in args]
    result = CliRunner().invoke(main, ["train", *args, "--data", "digits", "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and expected in result.output, result.output


def test_nproc_is_bounded():
    for bad in ("0", "1025"):
        result = CliRunner().invoke(main, ["train", "--recipe", "clean", "--nproc", bad])
        assert result.exit_code == 2 and "1<=x<=1024" in result.output, result.output


def test_an_existing_checkpoint_is_refused_before_any_process_starts(tmp_path):
    (tmp_path / "GOOD.toml").write_text(tomli_w.dumps(digits_raw("clean")))
    (tmp_path / "o.ckpt").mkdir()
    (tmp_path / "o.ckpt" / "last.pt").write_bytes(b"earlier run")
    result = CliRunner().invoke(main, ["train", "--recipe", str(tmp_path / "GOOD.toml"), "--data", "digits", "--out",
                                       str(tmp_path / "o"), "--nproc", "2", "--quiet"])
    assert result.exit_code == 2 and "pass --resume to continue it" in result.output, result.output


def test_nproc_1_is_the_single_process_run(tmp_path):
    (tmp_path / "r.toml").write_text(tomli_w.dumps(digits_raw("fgsm-rs", optimizer={"epochs": 1},
                                                              data={"holdout": 50})))
    bundles = []
    for extra in ([], ["--nproc", "1"]):
        out = tmp_path / f"m{len(bundles)}"
        result = CliRunner().invoke(main, ["train", "--recipe", str(tmp_path / "r.toml"), "--data", "digits", "--out",
                                           str(out), "--quiet", *extra])
        assert result.exit_code == 0, result.output
        bundles.append(load_file(out / "model.safetensors"))
    assert all(torch.equal(bundles[0][k], bundles[1][k]) for k in bundles[0])


def test_python_m_bastion_train_is_bastion_train():
    run = subprocess.run([sys.executable, "-m", "bastion.train", "--help"], env=_env(), capture_output=True,
                         timeout=60)
    assert run.returncode == 0 and b"--nproc" in run.stdout and b"torchrun" in run.stdout, run.stderr


# ---- the pieces ------------------------------------------------------------------------------

def test_every_rank_gets_its_share_of_a_deterministic_permutation():
    n, seed = 101, 3
    shards = [Ranks(rank=r, world_size=2).shard(n, seed, epoch=4) for r in (0, 1)]
    assert [len(s) for s in shards] == [Ranks(world_size=2).shard_size(n)] * 2 == [51, 51]
    assert set(torch.cat(shards).tolist()) == set(range(n))  # every sample; one repeated to even the shards
    assert torch.equal(shards[0], Ranks(rank=0, world_size=2).shard(n, seed, epoch=4))
    assert not torch.equal(shards[0], Ranks(rank=0, world_size=2).shard(n, seed, epoch=5))
    draws = [Ranks(rank=r, world_size=2).epoch_generator(seed, 4).initial_seed() for r in (0, 1)]
    assert draws[0] != draws[1]
    assert Ranks(rank=0, world_size=2).epoch_generator(seed, 4).initial_seed() == draws[0]


def test_the_global_batch_must_split_over_the_processes():
    recipe = recipe_from_dict(digits_raw("clean", optimizer={"batch_size": 64}), source="r.toml")
    assert per_process_batch(recipe, 1) == 64 and per_process_batch(recipe, 4) == 16
    with pytest.raises(ConfigError, match=r"r.toml: key 'optimizer.batch_size' \(64\).*multiple of 3"):
        per_process_batch(recipe, 3)


def test_torchrun_flags_for_one_host_and_for_several():
    assert torchrun_args(["--recipe", "fast"], nproc=2) == [
        "--standalone", "--nproc-per-node", "2", "--max-restarts", "0", "-m", "bastion.train", "--recipe", "fast"]
    assert torchrun_args([], nproc=4, nnodes=2, rdzv_endpoint="10.0.0.1:29400", rdzv_id="job7") == [
        "--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "10.0.0.1:29400", "--rdzv-id", "job7",
        "--nproc-per-node", "4", "--max-restarts", "0", "-m", "bastion.train"]
    with pytest.raises(UsageError, match="needs --rdzv-endpoint"):
        torchrun_args([], nproc=1, nnodes=2)
