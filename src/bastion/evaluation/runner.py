"""Worst-case evaluation of a suite, per sample, with a checkpoint after every attack.

At each eps the attacks of the suite run in order, each on the samples that every
earlier attack at that eps failed to break; a sample is robust at an eps only if
it survives them all.

The order adapts to the model without changing what is measured (:func:`plan_order`):
before the attacks, the indicators' cheap gradient probe (gradients zero, NaN or
unavailable; loss not increasing under gradient ascent) runs on a few dozen samples.
When it finds the gradients unusable, the suite's black-box attacks run first at every
eps, then the white-box ones in the declared order, and an attack that declares a cheaper
first stage runs its full budget (:meth:`bastion.attacks.Attack.for_masked_gradients`).
Every attack still runs on every sample the earlier ones left, so a sample's worst case
is the same in either order; only which attack broke it first, and the time, change.
Otherwise the suite's declared order stands. The report says which order ran and why.

This module owns the re-check that counts: every adversarial an attack returns is
confirmed here (:func:`confirm_adversarial`: finite, inside the eps ball and the
bounds, misclassified by the model) before it is counted as broken. An attack's own
re-prediction (:meth:`bastion.attacks.Attack.run`) only decides which samples it stops
working on; it is a claim, and claims that fail this check are reported as
unconfirmed. When the attacks run on an accelerated model (compiled, channels-last,
bf16: :mod:`bastion.models.acceleration`), this check and the clean accuracy use its
fp32 eager reference (:func:`~bastion.models.acceleration.reference_of`).

The run's state is a :class:`~bastion.evaluation.state.RunState`, written as JSON (no
pickle) atomically after each attack, so an interrupted run (Ctrl-C, kill) resumes
without redoing finished attacks and a reader never sees a half-written file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from bastion.attacks.base import AttackResult, predict
from bastion.attacks.toolbox import per_sample
from bastion.errors import ModelError, UsageError
from bastion.evaluation.indicators import gradient_probe
from bastion.evaluation.indicators import run_indicators as compute_indicators
from bastion.evaluation.inputs import BenchInputs
from bastion.evaluation.state import Fingerprint, Order, RunState, Unit, unit_key
from bastion.evaluation.suite import AttackSpec, Suite
from bastion.fsutil import atomic_write_text
from bastion.models.acceleration import reference_of
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
class OrderChosen:
    """The attacks' order (after the gradient probe, where it ran)."""

    order: Order


@dataclass(frozen=True)
class IndicatorsStarted:
    pass


@dataclass(frozen=True)
class IndicatorsFinished:
    seconds: float


RunEvent = Resumed | OrderChosen | UnitStarted | UnitFinished | IndicatorsStarted | IndicatorsFinished
EventHook = Callable[[RunEvent], None]


def fingerprint(inputs: BenchInputs, suite: Suite, seed: int) -> Fingerprint:
    """What must match for a checkpoint to be resumed: same model, samples, suite, eps and seed."""
    return Fingerprint(model_sha256=inputs.model_sha256, data_sha256=inputs.data_sha256, n=inputs.total,
                       suite_sha256=suite.digest, norm=suite.norm, eps=tuple(suite.epsilons), seed=seed)


def run_suite(inputs: BenchInputs, suite: Suite, *, seed: int = 0, checkpoint: Path | None = None,
              resume: bool = False, batch_size: int | None = None, on_event: EventHook | None = None,
              run_indicators: bool = True, attack_seed: int | None = None,
              order: Order | None = None) -> RunState:
    """Run every attack of ``suite`` at every eps; return the run's state (see module docstring).

    ``seed`` is the run's; ``attack_seed`` (default: ``seed``) seeds the attacks. They differ
    only in a shard of a sharded run, whose attacks take the shard's seed
    (:func:`bastion.evaluation.shards.shard_seed`) while its state keeps the run's.

    ``order`` imposes an order chosen elsewhere (a sharded run chooses it once, with
    :func:`plan_order` on the whole run's inputs, and gives it to every shard); by default the
    run chooses its own, and a resumed run keeps the order it started with.
    """
    emit = on_event or (lambda event: None)
    attack_seed = seed if attack_seed is None else attack_seed
    expected = fingerprint(inputs, suite, seed)
    state = _load_checkpoint(checkpoint, expected) if resume and checkpoint else None
    if state is not None:
        emit(Resumed(state))
    else:
        state = RunState(fingerprint=expected, samples=tuple(inputs.index.tolist()),
                         clean_correct=clean_correct(inputs, batch_size))
        _save(checkpoint, state)
    if state.order is None:
        state = state.with_order(order or plan_order(inputs, suite, state.clean_correct, seed=seed,
                                                     probe=run_indicators))
        _save(checkpoint, state)
        emit(OrderChosen(state.order))

    specs = {spec.label: spec for spec in suite.attacks}
    total = len(suite.epsilons) * len(suite.attacks)
    position = 0
    for eps in suite.epsilons:
        threat = suite.threat(eps, inputs.bounds)
        for label in state.order.attacks:
            position += 1
            if unit_key(eps, label) in state.done:
                continue
            standing = state.standing(eps)
            emit(UnitStarted(eps=eps, attack=label, standing=len(standing), position=position, total=total))
            unit = _run_unit(inputs, suite, specs[label], threat, standing, seed, attack_seed, batch_size,
                             masked=state.order.gradients_masked)
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
    probed = state.order.probe_seconds if state.order is not None else 0.0  # the probe ran before the attacks
    state = state.with_indicators(found, time.perf_counter() - start + probed)
    emit(IndicatorsFinished(state.indicator_seconds))
    return state


def plan_order(inputs: BenchInputs, suite: Suite, clean_correct: tuple[int, ...], *, seed: int = 0,
               probe: bool = True) -> Order:
    """The order of the suite's attacks at every eps (see the module docstring).

    The gradient probe runs when its verdict could change something (the suite has a black-box
    attack besides white-box ones) or when ``probe`` asks for it (the indicators report it).
    """
    declared = tuple(spec.label for spec in suite.attacks)
    black = [spec.label for spec in suite.attacks if spec.family != "white-box"]
    white = [spec.label for spec in suite.attacks if spec.family == "white-box"]
    if not (probe or (black and white)):
        return Order(declared, adapted=False, reason="The attacks ran in the order the suite declares.")
    start = time.perf_counter()
    verdicts = tuple(gradient_probe(inputs, suite, clean_correct, seed=seed))
    seconds = time.perf_counter() - start
    unusable = [v for v in verdicts if v.fired]
    if not unusable:
        return Order(declared, adapted=False, probe=verdicts, probe_seconds=seconds,
                     reason="The gradient probe found usable gradients, so the attacks ran in the order the suite "
                            "declares.")
    found = "; ".join(v.title.lower() for v in unusable)
    adapted = tuple(black + white)
    if not (black and white) or adapted == declared:
        why = "has no black-box attack" if not black else "already runs its black-box attacks first"
        return Order(declared, adapted=False, gradients_masked=True, probe=verdicts, probe_seconds=seconds,
                     reason=f"The gradient probe found unusable gradients ({found}); the suite {why}, so the "
                            "attacks ran in the order it declares.")
    return Order(adapted, adapted=True, gradients_masked=True, probe=verdicts, probe_seconds=seconds,
                 reason=f"The gradient probe found unusable gradients ({found}), so the black-box attack(s) "
                        f"{', '.join(black)} ran first at every eps, then the white-box ones; each attack still "
                        "ran on every sample the earlier ones left, so the worst case per sample is the same as in "
                        "the declared order; only which attack broke a sample first (and the time) changed.")


def clean_correct(inputs: BenchInputs, batch_size: int | None) -> tuple[int, ...]:
    try:
        correct = predict(reference_of(inputs.model), inputs.x, batch_size) == inputs.y
    except RuntimeError as exc:  # wrong input shape, dtype or device for this model
        first = str(exc).strip().splitlines()[0][:200]
        raise ModelError(f"the model cannot classify these samples ({first}); check --model and --data") from None
    return tuple(inputs.index[correct.cpu()].tolist())


def confirm_adversarial(model: nn.Module, threat: ThreatModel, eps: float, x: torch.Tensor, y: torch.Tensor,
                        x_adv: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """bool per sample: ``x_adv`` is finite, inside the eps ball and the bounds, and misclassified
    by ``model`` in fp32 eager (its reference, if it is accelerated).

    The independent check whose verdict a benchmark counts (see the module docstring).
    """
    x_adv = x_adv.to(x.device)
    finite = torch.isfinite(x_adv).flatten(1).all(dim=1)
    safe = torch.where(per_sample(finite, x), x_adv, x)
    lo, hi = threat.bounds
    inside = threat.distance(x, safe) <= eps + TOLERANCE * max(1.0, eps)
    in_bounds = ((safe >= lo - TOLERANCE) & (safe <= hi + TOLERANCE)).flatten(1).all(dim=1)
    wrong = predict(reference_of(model), safe, batch_size) != y
    return finite & inside & in_bounds & wrong


class Rechecked(NamedTuple):
    clean_correct: torch.Tensor  # bool per sample, by the model in fp32 eager
    robust: torch.Tensor         # bool per sample: clean_correct and not confirmed broken
    unconfirmed: int             # the attack's claims that failed confirm_adversarial


def confirmed_robust(model: nn.Module, threat: ThreatModel, x: torch.Tensor, y: torch.Tensor, result: AttackResult,
                     batch_size: int | None = None) -> Rechecked:
    """One attack result after the check of record, for a single attack run outside a benchmark."""
    clean = predict(reference_of(model), x, batch_size) == y
    claimed = result.success.to(x.device)
    confirmed = confirm_adversarial(model, threat, result.eps, x, y, result.x_adv, batch_size)
    return Rechecked(clean, clean & ~(claimed & confirmed), int((claimed & ~confirmed).sum()))


def _run_unit(inputs: BenchInputs, suite: Suite, spec: AttackSpec, threat: ThreatModel, standing: list[int],
              seed: int, attack_seed: int, batch_size: int | None, *, masked: bool = False) -> Unit:
    attack = suite.build(spec, threat, seed=attack_seed, batch_size=batch_size)
    if masked:
        attack = attack.for_masked_gradients()
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
