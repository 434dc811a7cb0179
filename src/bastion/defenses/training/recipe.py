"""Training recipes: TOML data validated against a fixed schema.

A recipe names a training method from :data:`METHODS` and sets its knobs; it
never names code to import. Every section and key is checked, and anything
wrong raises a one-line :class:`~bastion.errors.ConfigError` naming the file
and the key (``defenses/pgd-at.toml: key 'optimizer.lr' must be > 0, got -1``).

Layout (every key optional except ``recipe.method``)::

    [recipe]     name, description, method, seed
    [model]      architecture
    [data]       dataset, holdout
    [threat]     norm, eps, ramp
    [attack]     steps, step_size, random_start, noise, clip      (the inner maximisation)
    [loss]       beta
    [optimizer]  name, lr, momentum, weight_decay, nesterov, schedule, epochs, batch_size
    [augment]    shift
    [guard]      attack, steps, restarts, collapse_drop, keep
    [noise]      sigma                                            (gaussian: the training noise)
    [average]    decay                                            (weight averaging, Gowal et al. 2020)
    [awp]        gamma, warmup_epochs                             (weight perturbation, Wu et al. 2020)

Any combination is allowed: weight averaging and AWP work with every method.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.attacks.params import MAX_BATCH_SIZE, MAX_RESTARTS, MAX_STEPS
from bastion.errors import ConfigError
from bastion.tomlfile import read_toml

#: Training objectives bastion implements (see :mod:`bastion.defenses.training.losses`).
METHODS = ("clean", "pgd-at", "trades", "mart", "fgsm-rs", "gaussian")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "one-cycle", "cosine")
KEEP = ("last", "best")
#: Attacks the per-epoch held-out check may use (names in bastion's attack registry).
GUARD_ATTACKS = ("pgd", "apgd-ce", "apgd-dlr")
#: Budget maxima, so a typo cannot run until killed (the steps and restarts are the attacks' own).
MAX_EPOCHS = 10_000
MAX_HOLDOUT = 1_000_000
MAX_LR = 10.0


@dataclass(frozen=True)
class RecipeInfo:
    method: str = ""
    name: str = ""
    description: str = ""
    seed: int = 0

    def check(self) -> None:
        _require(self.method in METHODS, "method", f"must be one of {', '.join(METHODS)}, got {self.method!r}")
        _require(-(2 ** 63) <= self.seed < 2 ** 64, "seed",
                 f"must be an integer torch takes as a seed, got {self.seed}")


@dataclass(frozen=True)
class ModelSection:
    architecture: str = "mnist-cnn"

    def check(self) -> None:
        from bastion.models.architectures import ARCHITECTURES

        _require(self.architecture in ARCHITECTURES, "architecture",
                 f"must be a registered architecture ({', '.join(ARCHITECTURES)}), got {self.architecture!r}")


@dataclass(frozen=True)
class DataSection:
    dataset: str = "mnist"
    holdout: int = 200  # training images kept out of training for the per-epoch robust check

    def check(self) -> None:
        _require(0 <= self.holdout <= MAX_HOLDOUT, "holdout",
                 f"must be >= 0 and at most {MAX_HOLDOUT:,}, got {self.holdout}")


@dataclass(frozen=True)
class ThreatSection:
    norm: str = "linf"
    eps: float = 0.3
    ramp: float = 0.0  # fraction of the epochs over which the training eps grows linearly from 0

    def check(self) -> None:
        _require(self.norm in ("linf", "l2"), "norm", f"must be linf or l2, got {self.norm!r}")
        _require(self.eps > 0, "eps", f"must be > 0, got {self.eps}")
        _require(0 <= self.ramp < 1, "ramp", f"must be in [0, 1), got {self.ramp}")


@dataclass(frozen=True)
class AttackSection:
    steps: int = 7
    step_size: float = 0.25     # in units of eps
    random_start: bool = True
    noise: float = 1.0          # fgsm-rs: random start drawn from [-noise*eps, noise*eps]
    clip: bool = True           # fgsm-rs: project the step back into the eps ball (False = N-FGSM)

    def check(self) -> None:
        _require(1 <= self.steps <= MAX_STEPS, "steps", f"must be >= 1 and at most {MAX_STEPS:,}, got {self.steps}")
        _require(self.step_size > 0, "step_size", f"must be > 0, got {self.step_size}")
        _require(self.noise >= 0, "noise", f"must be >= 0, got {self.noise}")


@dataclass(frozen=True)
class LossSection:
    beta: float = 6.0  # TRADES / MART weight of the robustness term

    def check(self) -> None:
        _require(self.beta >= 0, "beta", f"must be >= 0, got {self.beta}")


@dataclass(frozen=True)
class OptimizerSection:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    schedule: str = "one-cycle"
    epochs: int = 30
    batch_size: int = 128

    def check(self) -> None:
        _require(self.name in OPTIMIZERS, "name", f"must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        _require(self.schedule in SCHEDULES, "schedule",
                 f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _require(0 < self.lr <= MAX_LR, "lr", f"must be > 0 and at most {MAX_LR:g}, got {self.lr}")
        _require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        _require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(1 <= self.epochs <= MAX_EPOCHS, "epochs",
                 f"must be >= 1 and at most {MAX_EPOCHS:,}, got {self.epochs}")
        _require(1 <= self.batch_size <= MAX_BATCH_SIZE, "batch_size",
                 f"must be >= 1 and at most {MAX_BATCH_SIZE:,}, got {self.batch_size}")


@dataclass(frozen=True)
class AugmentSection:
    shift: int = 0  # random translation by up to this many pixels

    def check(self) -> None:
        _require(0 <= self.shift <= 8, "shift", f"must be in [0, 8], got {self.shift}")


@dataclass(frozen=True)
class GuardSection:
    attack: str = "pgd"         # the per-epoch held-out robust check (apgd-ce sees through single-step masking)
    steps: int = 10             # its steps
    restarts: int = 1
    collapse_drop: float = 0.0  # restore the best checkpoint and stop when held-out robust accuracy
    #                             falls this far below its best (0 = no guard)
    keep: str = "last"          # which weights go in the bundle: the last epoch's or the best checked

    def check(self) -> None:
        _require(self.attack in GUARD_ATTACKS, "attack",
                 f"must be one of {', '.join(GUARD_ATTACKS)}, got {self.attack!r}")
        _require(1 <= self.steps <= MAX_STEPS, "steps", f"must be >= 1 and at most {MAX_STEPS:,}, got {self.steps}")
        _require(1 <= self.restarts <= MAX_RESTARTS, "restarts",
                 f"must be >= 1 and at most {MAX_RESTARTS:,}, got {self.restarts}")
        _require(0 <= self.collapse_drop <= 1, "collapse_drop", f"must be in [0, 1], got {self.collapse_drop}")
        _require(self.keep in KEEP, "keep", f"must be one of {', '.join(KEEP)}, got {self.keep!r}")


@dataclass(frozen=True)
class NoiseSection:
    sigma: float = 0.25  # gaussian: train on x + N(0, sigma^2 I), the noise `bastion certify --sigma` samples

    def check(self) -> None:
        _require(self.sigma > 0, "sigma", f"must be > 0, got {self.sigma}")


@dataclass(frozen=True)
class AverageSection:
    """Weight averaging (Gowal et al. 2020): train as usual, ship an exponential moving average of
    the weights (:mod:`bastion.defenses.training.averaging`); the held-out check judges the average."""

    decay: float = 0.0  # per optimizer step, after a (1+t)/(10+t) warm-up; 0 = off (0.995 in the paper)

    def check(self) -> None:
        _require(0 <= self.decay < 1, "decay", f"must be in [0, 1) (0 = off), got {self.decay}")


@dataclass(frozen=True)
class AWPSection:
    """Adversarial weight perturbation (Wu et al. 2020): each step's gradient is taken at weights moved
    by ``gamma * ||w||`` per layer towards a higher training loss (:mod:`bastion.defenses.training.awp`)."""

    gamma: float = 0.0       # relative size of the perturbation; 0 = off (TRADES-AWP: 5e-3)
    warmup_epochs: int = 0   # epochs of plain training before AWP starts

    def check(self) -> None:
        _require(0 <= self.gamma < 1, "gamma", f"must be in [0, 1) (0 = off), got {self.gamma}")
        _require(0 <= self.warmup_epochs <= MAX_EPOCHS, "warmup_epochs",
                 f"must be >= 0 and at most {MAX_EPOCHS:,}, got {self.warmup_epochs}")


@dataclass(frozen=True)
class Recipe:
    recipe: RecipeInfo
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    threat: ThreatSection = field(default_factory=ThreatSection)
    attack: AttackSection = field(default_factory=AttackSection)
    loss: LossSection = field(default_factory=LossSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    guard: GuardSection = field(default_factory=GuardSection)
    noise: NoiseSection = field(default_factory=NoiseSection)
    average: AverageSection = field(default_factory=AverageSection)
    awp: AWPSection = field(default_factory=AWPSection)
    source: str = field(default="<dict>", compare=False)

    @property
    def method(self) -> str:
        return self.recipe.method

    @property
    def name(self) -> str:
        return self.recipe.name or self.recipe.method

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain TOML-able data (what the bundle records)."""
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name != "source"}

    def digest(self) -> str:
        """A short hash of the settings, so a resumed run can refuse a changed recipe."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_overrides(self, *, epochs: int | None = None, seed: int | None = None) -> Recipe:
        """A copy with the command line's --epochs / --seed applied."""
        recipe = self
        if epochs is not None:
            if not 1 <= epochs <= MAX_EPOCHS:
                raise ConfigError(f"--epochs must be >= 1 and at most {MAX_EPOCHS:,}, got {epochs:,}")
            recipe = dataclasses.replace(recipe, optimizer=dataclasses.replace(recipe.optimizer, epochs=epochs))
        if seed is not None:
            recipe = dataclasses.replace(recipe, recipe=dataclasses.replace(recipe.recipe, seed=seed))
        return recipe

    def with_settings(self, settings: dict[str, Any]) -> Recipe:
        """A copy with ``{"section.key": value}`` changed, validated like a recipe file."""
        raw = self.to_dict()
        for dotted, value in settings.items():
            section, _, key = dotted.partition(".")
            if section not in raw or not key:
                raise ConfigError(f"{self.source}: setting '{dotted}' is not section.key "
                                  f"(sections: {', '.join(raw)})")
            raw[section][key] = value
        return recipe_from_dict(raw, source=self.source)


#: TOML section -> the dataclass that validates it.
SECTIONS: dict[str, type] = {
    "recipe": RecipeInfo, "model": ModelSection, "data": DataSection, "threat": ThreatSection,
    "attack": AttackSection, "loss": LossSection, "optimizer": OptimizerSection, "augment": AugmentSection,
    "guard": GuardSection, "noise": NoiseSection, "average": AverageSection, "awp": AWPSection,
}


class _Invalid(Exception):
    """Raised by a section's check(); carries the key and the message."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise _Invalid(key, message)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (see the module docstring for its layout)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such recipe file")
    return recipe_from_dict(read_toml(path, ConfigError), source=str(path))


def recipe_from_dict(raw: dict[str, Any], *, source: str = "<dict>") -> Recipe:
    """Validate a parsed recipe; ``source`` names it in error messages."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe must be a TOML table")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown section '{unknown[0]}' (known: {', '.join(SECTIONS)})")
    info = raw.get("recipe")
    if not isinstance(info, dict) or "method" not in info:
        raise ConfigError(f"{source}: missing key 'recipe.method' (one of {', '.join(METHODS)})")
    sections = {}
    for name, cls in SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: '{name}' must be a table ([{name}]), got {type(table).__name__}")
        sections[name] = _build_section(cls, table, name, source)
    return Recipe(**sections, source=source)


def _build_section(cls: type, table: dict[str, Any], section: str, source: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{section}.{key}' (known: {', '.join(fields)})")
        values[key] = _coerce(value, fields[key].type, f"{section}.{key}", source)
    obj = cls(**values)
    try:
        obj.check()
    except _Invalid as exc:
        raise ConfigError(f"{source}: key '{section}.{exc.key}' {exc}") from None
    return obj


def _coerce(value: Any, type_name: str, key: str, source: str):
    # Field types are strings under `from __future__ import annotations`.
    expected = {"int": int, "float": float, "bool": bool, "str": str}[type_name]
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            ok, value = True, float(value)
        except OverflowError:
            ok = False
    if expected is float and ok and not math.isfinite(value):
        raise ConfigError(f"{source}: key '{key}' must be a finite number, got {value!r}")
    if not ok:
        noun = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}[type_name]
        raise ConfigError(f"{source}: key '{key}' must be {noun}, got {value!r}")
    return value
