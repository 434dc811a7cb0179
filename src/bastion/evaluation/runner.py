"""Worst-case evaluation of a suite, per sample, with a checkpoint after every attack.

At each eps the attacks of the suite run in order, each on the samples that every
earlier attack at that eps failed to break; a sample is robust at an eps only if
it survives them all. Every adversarial an attack returns is re-checked here,
against the model and the threat model, before it counts.

The run's state is plain JSON (no pickle), rewritten atomically after each
attack, so an interrupted run (Ctrl-C, kill) resumes without redoing finished
attacks and a reader never sees a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bastion.attacks.base import predict
from bastion.errors import ModelError, UsageError
from bastion.evaluation.suite import Suite
from bastion.fsutil import atomic_write_text
from bastion.threat import ThreatModel

STATE_VERSION = 1
#: Slack when re-checking that an adversarial lies inside the eps ball and the input bounds.
TOLERANCE = 1e-5

#: on_event(kind, info): kinds "resume", "unit-start", "unit-end", "indicators-start", "indicators-end".
EventHook = Callable[[str, dict], None]


@dataclass
class BenchInputs:
    """What a benchmark attacks: a model in eval mode and the samples, on the model's device."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    bounds: tuple[float, float]
    num_classes: int


def unit_key(eps: float, label: str) -> str:
    return f"eps={eps!r}|{label}"


def fingerprint(inputs: BenchInputs, suite: Suite, seed: int) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: same model, samples, suite, eps and seed."""
    return {"model_sha256": model_digest(inputs.model), "data_sha256": data_digest(inputs.x, inputs.y),
            "n": len(inputs.y), "suite_sha256": suite.digest, "norm": suite.norm,
            "eps": list(suite.epsilons), "seed": seed}


def run_suite(inputs: BenchInputs, suite: Suite, *, seed: int = 0, checkpoint: Path | None = None,
              resume: bool = False, batch_size: int | None = None, on_event: EventHook | None = None,
              run_indicators: bool = True) -> dict[str, Any]:
    """Run every attack of ``suite`` at every eps; return the run's state (see module docstring)."""
    from bastion.evaluation.indicators import run_indicators as compute_indicators

    emit = on_event or (lambda kind, info: None)
    expected = fingerprint(inputs, suite, seed)
    state = _load_checkpoint(checkpoint, expected) if resume and checkpoint else None
    if state is not None:
        emit("resume", {"done": len(state["units"])})
    else:
        try:
            clean = predict(inputs.model, inputs.x, batch_size or 1000) == inputs.y
        except RuntimeError as exc:  # wrong input shape, dtype or device for this model
            first = str(exc).strip().splitlines()[0][:200]
            raise ModelError(f"the model cannot classify these samples ({first}); check --model and --data") from None
        state = {"version": STATE_VERSION, "fingerprint": expected,
                 "clean_correct": clean.nonzero().flatten().tolist(), "units": [], "indicators": None}
        _save(checkpoint, state)

    done = {u["key"] for u in state["units"]}
    total = len(suite.epsilons) * len(suite.attacks)
    position = 0
    for eps in suite.epsilons:
        threat = suite.threat(eps, inputs.bounds)
        for spec in suite.attacks:
            position += 1
            key = unit_key(eps, spec.label)
            if key in done:
                continue
            standing = standing_indices(state, eps)
            emit("unit-start", {"eps": eps, "attack": spec.label, "standing": len(standing),
                                "position": position, "total": total})
            unit = _run_unit(inputs, suite, spec, threat, standing, seed, batch_size)
            state["units"].append(unit)
            _save(checkpoint, state)
            emit("unit-end", unit)

    if run_indicators and state["indicators"] is None:
        emit("indicators-start", {})
        start = time.perf_counter()
        state["indicators"] = [i.to_dict() for i in compute_indicators(inputs, suite, state, seed=seed)]
        state["indicator_seconds"] = time.perf_counter() - start
        _save(checkpoint, state)
        emit("indicators-end", {"seconds": state["indicator_seconds"]})
    return state


def standing_indices(state: dict, eps: float) -> list[int]:
    """Samples correctly classified and not broken by any attack finished so far at ``eps``."""
    broken = {i for u in state["units"] if u["eps"] == eps for i in u["broken"]}
    return [i for i in state["clean_correct"] if i not in broken]


def robust_mask(state: dict, eps: float, n: int) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[standing_indices(state, eps)] = True
    return mask


def confirm_adversarial(model: nn.Module, threat: ThreatModel, eps: float, x: torch.Tensor, y: torch.Tensor,
                        x_adv: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """bool per sample: ``x_adv`` is finite, inside the eps ball and the bounds, and misclassified."""
    x_adv = x_adv.to(x.device)
    finite = torch.isfinite(x_adv).flatten(1).all(dim=1)
    safe = torch.where(finite.view(-1, *[1] * (x.dim() - 1)), x_adv, x)
    lo, hi = threat.bounds
    inside = threat.distance(x, safe) <= eps + TOLERANCE * max(1.0, eps)
    in_bounds = ((safe >= lo - TOLERANCE) & (safe <= hi + TOLERANCE)).flatten(1).all(dim=1)
    wrong = predict(model, safe, batch_size) != y
    return finite & inside & in_bounds & wrong


def _run_unit(inputs: BenchInputs, suite: Suite, spec, threat: ThreatModel, standing: list[int], seed: int,
              batch_size: int | None) -> dict[str, Any]:
    attack = suite.build(spec, threat, seed=seed, batch_size=batch_size)
    unit = {"key": unit_key(threat.single, spec.label), "eps": threat.single, "attack": spec.label,
            "name": spec.name, "family": attack.family, "params": attack.params(), "standing": len(standing),
            "broken": [], "unconfirmed": 0, "seconds": 0.0, "queries": 0, "loss_trace": []}
    if not standing:
        return unit
    index = torch.tensor(standing, dtype=torch.long, device=inputs.x.device)
    x, y = inputs.x[index], inputs.y[index]
    start = time.perf_counter()
    try:
        (result,) = attack.run(inputs.model, x, y)
    except RuntimeError as exc:
        # Typically a model that gives no input gradient: the benchmark goes on with the
        # other attacks, and the report shows the error and flags the gradients.
        unit.update(error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}",
                    seconds=time.perf_counter() - start)
        return unit
    claimed = ~result.robust.to(x.device)
    confirmed = confirm_adversarial(inputs.model, threat, threat.single, x, y, result.x_adv,
                                    batch_size or attack.batch_for(x.device))
    broken = claimed & confirmed
    unit.update(broken=index[broken].cpu().tolist(), unconfirmed=int((claimed & ~confirmed).sum()),
                seconds=time.perf_counter() - start, queries=int(result.queries),
                loss_trace=[float(v) for v in result.loss_trace])
    return unit


def _load_checkpoint(path: Path, expected: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: unreadable checkpoint ({exc}); rerun without --resume to start over") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise UsageError(f"{path}: checkpoint from another bastion version; rerun without --resume")
    if state.get("fingerprint") != expected:
        changed = [k for k in expected if state.get("fingerprint", {}).get(k) != expected[k]]
        raise UsageError(f"{path}: checkpoint was made with a different {', '.join(changed)}; "
                         "rerun without --resume or choose another --out")
    return state


def _save(path: Path | None, state: dict) -> None:
    if path is not None:
        atomic_write_text(path, json.dumps(state))


def model_digest(model: nn.Module) -> str:
    """sha256 over the model's parameters and buffers, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in (x, y):
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
