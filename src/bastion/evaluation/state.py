"""The typed state of a benchmark run: what every attack found, per sample, as values.

A :class:`RunState` is what the runner builds, the checkpoint stores, the report and the
indicators read. Every per-sample outcome in it is keyed by the sample's *global* index
(its position in the benchmark's data), so a state can cover any subset of the samples:
the whole data set in a local run, or one shard of it in a worker. :meth:`RunState.merge`
joins the states of disjoint shards into the state of one run over all of them; with
attacks that are deterministic per sample the merge equals a local run with the same
shard layout (the loss traces up to float rounding, the timings not at all).

The JSON form (:meth:`RunState.to_json`, :meth:`RunState.from_json`) carries a version;
a state written by another version is refused with one line, never half-read.

The digests that tie a state to its model and data are computed here and nowhere else
(:func:`model_digest`, :func:`data_digest`), once per run, by whoever builds the run's
inputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from bastion.errors import UsageError

STATE_VERSION = 3


def model_digest(model: nn.Module) -> str:
    """sha256 over the model's parameters and buffers, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(_raw_bytes(tensor))
    return digest.hexdigest()


def data_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 over the samples and their labels."""
    digest = hashlib.sha256()
    for tensor in (x, y):
        digest.update(_raw_bytes(tensor))
    return digest.hexdigest()


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


@dataclass(frozen=True)
class Fingerprint:
    """What must match for a checkpoint to be resumed, or for two shards to be merged."""

    model_sha256: str
    data_sha256: str
    n: int                     # samples in the whole run (every shard of it)
    suite_sha256: str
    norm: str
    eps: tuple[float, ...]
    seed: int

    def differences(self, other: Fingerprint) -> list[str]:
        """Names of the fields in which ``other`` differs."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


@dataclass(frozen=True)
class Indicator:
    """One attack-failure indicator's verdict (see :mod:`bastion.evaluation.indicators`)."""

    key: str
    title: str
    status: str  # "ok", "fired" or "skipped"
    finding: str  # what was measured, in one sentence
    meaning: str  # why it matters when it fires
    advice: str  # what to do when it fires
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def fired(self) -> bool:
        return self.status == "fired"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Order:
    """The order a run's attacks ran in at every eps, and why (:func:`bastion.evaluation.runner.plan_order`)."""

    attacks: tuple[str, ...]          # the suite's labels, in the order they ran
    adapted: bool                     # not the order the suite declares
    reason: str                       # one sentence for the report
    gradients_masked: bool = False    # the gradient probe found unusable gradients
    probe: tuple[Indicator, ...] = ()  # the probe's verdicts, when it ran before the attacks
    probe_seconds: float = field(default=0.0, compare=False)  # a time, not an outcome

    def to_dict(self) -> dict[str, Any]:
        return {"attacks": list(self.attacks), "adapted": self.adapted, "reason": self.reason,
                "gradients_masked": self.gradients_masked, "probe": [i.to_dict() for i in self.probe],
                "probe_seconds": self.probe_seconds}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Order:
        return cls(attacks=tuple(raw["attacks"]), adapted=bool(raw["adapted"]), reason=str(raw["reason"]),
                   gradients_masked=bool(raw["gradients_masked"]), probe=tuple(Indicator(**i) for i in raw["probe"]),
                   probe_seconds=float(raw["probe_seconds"]))


@dataclass(frozen=True)
class Unit:
    """One attack of the suite at one eps, on the samples still standing when it ran."""

    eps: float
    attack: str                 # the suite's label: the name, or name#k when a name repeats
    name: str                   # the registry name
    family: str                 # "white-box", "black-box" or "transfer" (as the attack instance said)
    params: dict[str, Any]      # every hyperparameter, for the report
    standing: int               # samples it attacked
    broken: tuple[int, ...] = ()  # global indices it broke, each confirmed by the runner's re-check
    unconfirmed: int = 0        # claimed adversarials that failed the re-check
    seconds: float = 0.0
    queries: int = 0            # model evaluations, counted per sample
    loss_trace: tuple[float, ...] = ()  # mean loss per step over the working batch
    trace_counts: tuple[int, ...] = ()  # per-sample losses averaged at each step (to merge traces)
    error: str | None = None    # why the attack could not run, if it could not

    @property
    def key(self) -> str:
        return unit_key(self.eps, self.attack)

    def merge(self, other: Unit) -> Unit:
        """This unit and ``other`` (the same attack on a disjoint set of samples) as one."""
        if (self.key, self.name, self.family, self.params) != (other.key, other.name, other.family, other.params):
            raise UsageError(f"cannot merge {self.key} with {other.key}: not the same attack and settings")
        steps = max(len(self.trace_counts), len(other.trace_counts))
        sums, counts = [0.0] * steps, [0] * steps
        for unit in (self, other):
            for step, (mean, count) in enumerate(zip(unit.loss_trace, unit.trace_counts)):
                sums[step] += mean * count
                counts[step] += count
        return replace(
            self, standing=self.standing + other.standing, broken=tuple(sorted(self.broken + other.broken)),
            unconfirmed=self.unconfirmed + other.unconfirmed, seconds=self.seconds + other.seconds,
            queries=self.queries + other.queries, loss_trace=tuple(s / max(c, 1) for s, c in zip(sums, counts)),
            trace_counts=tuple(counts), error=self.error or other.error)


def unit_key(eps: float, label: str) -> str:
    return f"eps={eps!r}|{label}"


@dataclass(frozen=True)
class RunState:
    """A benchmark run so far: its fingerprint, the samples it covers, and every finished unit."""

    fingerprint: Fingerprint
    samples: tuple[int, ...]        # global indices this state covers, ascending
    clean_correct: tuple[int, ...]  # of those, the ones the model classifies correctly, ascending
    units: tuple[Unit, ...] = ()    # in the order they ran (``order``)
    indicators: tuple[Indicator, ...] | None = None  # None until the indicators ran
    indicator_seconds: float = 0.0
    order: Order | None = None      # None until the runner chose it

    # ---- reading ----------------------------------------------------------------------
    @property
    def done(self) -> frozenset[str]:
        """Keys of the finished units."""
        return frozenset(u.key for u in self.units)

    def units_at(self, eps: float) -> list[Unit]:
        return [u for u in self.units if u.eps == eps]

    def standing(self, eps: float) -> list[int]:
        """Samples correctly classified and not broken by any attack finished so far at ``eps``."""
        broken = {i for u in self.units_at(eps) for i in u.broken}
        return [i for i in self.clean_correct if i not in broken]

    def robust_mask(self, eps: float, n: int | None = None) -> torch.Tensor:
        """bool over the ``n`` samples of the run (default: all of them): standing at ``eps``."""
        mask = torch.zeros(self.fingerprint.n if n is None else n, dtype=torch.bool)
        mask[torch.tensor(self.standing(eps), dtype=torch.long)] = True
        return mask

    # ---- new states from this one -------------------------------------------------------
    def with_unit(self, unit: Unit) -> RunState:
        return replace(self, units=(*self.units, unit))

    def with_indicators(self, indicators: list[Indicator], seconds: float) -> RunState:
        return replace(self, indicators=tuple(indicators), indicator_seconds=seconds)

    def with_order(self, order: Order) -> RunState:
        return replace(self, order=order)

    def merge(self, other: RunState) -> RunState:
        """The state of one run over the samples of both (which must not overlap).

        Both must come from the same run (same fingerprint), have run their attacks in the
        same order and finished the same units; the merged state keeps this one's order
        (give every shard the order chosen once for the whole run: ``run_suite(order=...)``).
        Indicators describe a whole run, so the merged state has none: compute them on it.
        """
        changed = self.fingerprint.differences(other.fingerprint)
        if changed:
            raise UsageError(f"cannot merge run states with a different {', '.join(changed)}")
        overlap = set(self.samples) & set(other.samples)
        if overlap:
            raise UsageError(f"cannot merge run states that share {len(overlap)} sample(s), e.g. {min(overlap)}")
        if self.order is not None and other.order is not None and self.order.attacks != other.order.attacks:
            raise UsageError("cannot merge run states whose attacks ran in different orders; give every shard "
                             "the same order")
        if [u.key for u in self.units] != [u.key for u in other.units]:
            raise UsageError("cannot merge run states that finished different attacks; finish both first")
        return RunState(
            fingerprint=self.fingerprint, samples=tuple(sorted(self.samples + other.samples)),
            clean_correct=tuple(sorted(self.clean_correct + other.clean_correct)),
            units=tuple(a.merge(b) for a, b in zip(self.units, other.units)), order=self.order or other.order)

    # ---- JSON ---------------------------------------------------------------------------
    def to_json(self) -> str:
        units = [{"key": u.key, **asdict(u)} for u in self.units]
        return json.dumps({
            "version": STATE_VERSION, "fingerprint": asdict(self.fingerprint), "samples": list(self.samples),
            "clean_correct": list(self.clean_correct), "units": units,
            "indicators": None if self.indicators is None else [i.to_dict() for i in self.indicators],
            "indicator_seconds": self.indicator_seconds,
            "order": None if self.order is None else self.order.to_dict()})

    @classmethod
    def from_json(cls, text: str, *, source: str = "run state") -> RunState:
        """Parse :meth:`to_json`'s output; ``source`` (a path) names the text in errors."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{source}: unreadable checkpoint ({exc}); rerun without --resume to start over") from None
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            raise UsageError(f"{source}: checkpoint from another bastion version; rerun without --resume")
        try:
            fingerprint = raw["fingerprint"]
            return cls(
                fingerprint=Fingerprint(**{**fingerprint, "eps": tuple(fingerprint["eps"])}),
                samples=tuple(raw["samples"]), clean_correct=tuple(raw["clean_correct"]),
                units=tuple(_unit_from_dict(u) for u in raw["units"]),
                indicators=None if raw["indicators"] is None else tuple(Indicator(**i) for i in raw["indicators"]),
                indicator_seconds=float(raw["indicator_seconds"]),
                order=None if raw["order"] is None else Order.from_dict(raw["order"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{source}: unreadable checkpoint (bad or missing field: {exc}); "
                             "rerun without --resume to start over") from None


def _unit_from_dict(raw: dict[str, Any]) -> Unit:
    values = {k: v for k, v in raw.items() if k != "key"}
    for name in ("broken", "loss_trace", "trace_counts"):
        values[name] = tuple(values[name])
    unit = Unit(**values)
    if raw.get("key", unit.key) != unit.key:
        raise ValueError(f"unit key {raw['key']!r} does not match its eps and attack")
    return unit
