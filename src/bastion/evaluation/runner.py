"""Worst-case evaluation of a suite, per sample, with a checkpoint after every attack.

At each eps the attacks of the suite run in order, each on the samples that every
earlier attack at that eps failed to break; a sample is robust at an eps only if
it survives them all.

This module owns the re-check that counts: every adversarial an attack returns is
confirmed here (:func:`confirm_adversarial`: finite, inside the eps ball and the
bounds, misclassified by the model) before it is counted as broken. An attack's own
re-prediction (:meth:`bastion.attacks.Attack.run`) only decides which samples it stops
working on; it is a claim, and claims that fail this check are reported as
unconfirmed.

The run's state is a :class:`~bastion.evaluation.state.RunState`, written as JSON (no
pickle) atomically after each attack, so an interrupted run (Ctrl-C, kill) resumes
without redoing finished attacks and a reader never sees a half-written file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from bastion.attacks.base import predict
from bastion.attacks.toolbox import per_sample
from bastion.errors import ModelError, UsageError
from bastion.evaluation.indicators import run_indicators as compute_indicators
from bastion.evaluation.inputs import BenchInputs
from bastion.evaluation.state import Fingerprint, RunState, Unit, unit_key
from bastion.evaluation.suite import AttackSpec, Suite
from bastion.fsutil import atomic_write_text
from bastion.threat import ThreatModel

#: Slack when re-checking that an adversarial lies inside the eps ball and the input bounds.
TOLERANCE = 1e-5


@dataclass(frozen=True)
class Resumed:
    """A checkpoint was found and will be continued."""

    state: RunState


@dataclass(frozen=True)
class UnitStarted:
    eps: float
    attack: str
    standing: int
    position: int  # 1-based, over every (eps, attack) of the suite
    total: int


@dataclass(frozen=True)
class UnitFinished:
    unit: Unit


@dataclass(frozen=True)
class IndicatorsStarted:
    pass


@dataclass(frozen=True)
class IndicatorsFinished:
    seconds: float


RunEvent = Resumed | UnitStarted | UnitFinished | IndicatorsStarted | IndicatorsFinished
EventHook = Callable[[RunEvent], None]


def fingerprint(inputs: BenchInputs, suite: Suite, seed: int) -> Fingerprint:
    """What must match for a checkpoint to be resumed: same model, samples, suite, eps and seed."""
    return Fingerprint(model_sha256=inputs.model_sha256, data_sha256=inputs.data_sha256, n=inputs.total,
                       suite_sha256=suite.digest, norm=suite.norm, eps=tuple(suite.epsilons), seed=seed)


def run_suite(inputs: BenchInputs, suite: Suite, *, seed: int = 0, checkpoint: Path | None = None,
              resume: bool = False, batch_size: int | None = None, on_event: EventHook | None = None,
              run_indicators: bool = True, attack_seed: int | None = None) -> RunState:
    """Run every attack of ``suite`` at every eps; return the run's state (see module docstring).

    ``seed`` is the run's; ``attack_seed`` (default: ``seed``) seeds the attacks. They differ
    only in a shard of a sharded run, whose attacks take the shard's seed
    (:func:`bastion.evaluation.shards.shard_seed`) while its state keeps the run's.
    """
    emit = on_event or (lambda event: None)
    attack_seed = seed if attack_seed is None else attack_seed
    expected = fingerprint(inputs, suite, seed)
    state = _load_checkpoint(checkpoint, expected) if resume and checkpoint else None
    if state is not None:
        emit(Resumed(state))
    else:
        state = RunState(fingerprint=expected, samples=tuple(inputs.index.tolist()),
                         clean_correct=_clean_correct(inputs, batch_size))
        _save(checkpoint, state)

    total = len(suite.epsilons) * len(suite.attacks)
    position = 0
    for eps in suite.epsilons:
        threat = suite.threat(eps, inputs.bounds)
        for spec in suite.attacks:
            position += 1
            if unit_key(eps, spec.label) in state.done:
                continue
            standing = state.standing(eps)
            emit(UnitStarted(eps=eps, attack=spec.label, standing=len(standing), position=position, total=total))
            unit = _run_unit(inputs, suite, spec, threat, standing, seed, attack_seed, batch_size)
            state = state.with_unit(unit)
            _save(checkpoint, state)
            emit(UnitFinished(unit))

    if run_indicators and state.indicators is None:
        state = add_indicators(inputs, suite, state, seed=seed, on_event=emit)
        _save(checkpoint, state)
    return state


def add_indicators(inputs: BenchInputs, suite: Suite, state: RunState, *, seed: int,
                   on_event: EventHook | None = None) -> RunState:
    """``state`` with the attack-failure indicators of the whole run it describes (computed once per run)."""
    emit = on_event or (lambda event: None)
    emit(IndicatorsStarted())
    start = time.perf_counter()
    found = compute_indicators(inputs, suite, state, seed=seed)
    state = state.with_indicators(found, time.perf_counter() - start)
    emit(IndicatorsFinished(state.indicator_seconds))
    return state


def _clean_correct(inputs: BenchInputs, batch_size: int | None) -> tuple[int, ...]:
    try:
        correct = predict(inputs.model, inputs.x, batch_size) == inputs.y
    except RuntimeError as exc:  # wrong input shape, dtype or device for this model
        first = str(exc).strip().splitlines()[0][:200]
        raise ModelError(f"the model cannot classify these samples ({first}); check --model and --data") from None
    return tuple(inputs.index[correct.cpu()].tolist())


def confirm_adversarial(model: nn.Module, threat: ThreatModel, eps: float, x: torch.Tensor, y: torch.Tensor,
                        x_adv: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """bool per sample: ``x_adv`` is finite, inside the eps ball and the bounds, and misclassified.

    The independent check whose verdict a benchmark counts (see the module docstring).
    """
    x_adv = x_adv.to(x.device)
    finite = torch.isfinite(x_adv).flatten(1).all(dim=1)
    safe = torch.where(per_sample(finite, x), x_adv, x)
    lo, hi = threat.bounds
    inside = threat.distance(x, safe) <= eps + TOLERANCE * max(1.0, eps)
    in_bounds = ((safe >= lo - TOLERANCE) & (safe <= hi + TOLERANCE)).flatten(1).all(dim=1)
    wrong = predict(model, safe, batch_size) != y
    return finite & inside & in_bounds & wrong


def _run_unit(inputs: BenchInputs, suite: Suite, spec: AttackSpec, threat: ThreatModel, standing: list[int],
              seed: int, attack_seed: int, batch_size: int | None) -> Unit:
    attack = suite.build(spec, threat, seed=attack_seed, batch_size=batch_size)
    # The unit records the run's seed, so the shards of one run merge; each shard's own
    # attack seed follows from it and the shard's index (the report's execution.shards).
    unit = Unit(eps=threat.single, attack=spec.label, name=spec.name, family=attack.family,
                params={**attack.params(), "seed": seed}, standing=len(standing))
    if not standing:
        return unit
    where = inputs.positions(standing)
    x, y = inputs.x[where], inputs.y[where]
    start = time.perf_counter()
    try:
        (result,) = attack.run(inputs.model, x, y)
    except RuntimeError as exc:
        # Typically a model that gives no input gradient: the benchmark goes on with the
        # other attacks, and the report shows the error and flags the gradients.
        return replace(unit, error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}",
                       seconds=time.perf_counter() - start)
    claimed = ~result.robust.to(x.device)
    confirmed = confirm_adversarial(inputs.model, threat, threat.single, x, y, result.x_adv,
                                    batch_size or attack.batch_for(x.device))
    broken = (claimed & confirmed).cpu()
    return replace(unit, broken=tuple(torch.tensor(standing)[broken].tolist()),
                   unconfirmed=int((claimed & ~confirmed).sum()), seconds=time.perf_counter() - start,
                   queries=int(result.queries), loss_trace=tuple(float(v) for v in result.loss_trace),
                   trace_counts=tuple(int(c) for c in result.loss_counts))


def _load_checkpoint(path: Path, expected: Fingerprint) -> RunState | None:
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: unreadable checkpoint ({exc}); rerun without --resume to start over") from None
    state = RunState.from_json(text, source=str(path))
    changed = expected.differences(state.fingerprint)
    if changed:
        raise UsageError(f"{path}: checkpoint was made with a different {', '.join(changed)}; "
                         "rerun without --resume or choose another --out")
    return state


def _save(path: Path | None, state: RunState) -> None:
    if path is not None:
        atomic_write_text(path, state.to_json())
