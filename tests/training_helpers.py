"""Shared setup for the training tests: tiny recipes on scikit-learn's 8x8 digits."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from bastion.attacks.pgd import PGD
from bastion.data import load_data
from bastion.defenses.training import recipe_from_dict
from bastion.threat import ThreatModel

EPS = 0.2

BASE = {
    "recipe": {"method": "clean", "seed": 0},
    "model": {"architecture": "digits-cnn"},
    "data": {"dataset": "digits", "holdout": 100},
    "threat": {"norm": "linf", "eps": EPS, "ramp": 0.0},
    "attack": {"steps": 3, "step_size": 0.5},
    "optimizer": {"name": "adam", "lr": 0.005, "weight_decay": 0.0, "schedule": "one-cycle",
                  "epochs": 6, "batch_size": 64},
    "guard": {"steps": 5},
}


def digits_raw(method: str = "clean", **sections) -> dict:
    raw = copy.deepcopy(BASE)
    raw["recipe"]["method"] = method
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def digits_recipe(method: str = "clean", **sections):
    return recipe_from_dict(digits_raw(method, **sections), source="test-recipe")


def digits_train():
    return load_data("digits", "train")


def robust_accuracy(model, eps: float = EPS, steps: int = 20) -> float:
    test = load_data("digits", "test")
    attack = PGD(ThreatModel(eps=eps), steps=steps, step_size=eps / 4, seed=1)
    return attack.run(model, test.x, test.y)[0].robust_accuracy


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def kill_9_after_checkpoint(args: list[str], checkpoint: Path) -> None:
    """Run ``python args...`` and SIGKILL it as soon as ``checkpoint`` exists (its first epoch's)."""
    # Same thread count as the test process (conftest: 1): float sums depend on how work is split.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = checkpoint.parent.with_name(checkpoint.parent.name + ".stderr")
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    try:
        deadline = time.monotonic() + 60
        while not checkpoint.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None, (f"training ended (exit {proc.returncode}) before it could be killed: "
                                     f"{log.read_text()[-2000:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert checkpoint.exists(), "no checkpoint was written before the kill"
