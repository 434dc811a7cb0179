"""Sanitisers (validation + a chain of transforms) and the attack-ready sanitised model.

A sanitiser recipe is TOML data (``defenses/sanitize-*.toml``)::

    name = "sanitize-bitdepth"
    description = "..."
    [validation]            # see bastion.defenses.validation; a recipe needs it, a transform, or both
    bounds = [0.0, 1.0]
    out_of_range = "clamp"  # or "reject"
    nonfinite = "reject"    # or "clamp"
    [[transforms]]          # applied in order
    type = "bit-depth"
    bits = 1
    [adaptive]              # optional
    eot_samples = 8         # draws averaged per forward when a transform is random

:class:`SanitizedModel` is an ``nn.Module`` that attacks can use like any model:
its forward already carries the adaptive gradient path (BPDA for transforms that
declare ``differentiable = False``, EOT for those that declare ``randomized = True``),
so attacks need no special case to evaluate it honestly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
import torch
from torch import nn

from bastion.catalog import resolve
from bastion.defenses.transforms import Transform, apply_for_attack, build_transform
from bastion.defenses.validation import InputValidator, build_validator
from bastion.errors import ConfigError, DataError, UsageError
from bastion.fsutil import atomic_write_bytes
from bastion.models.bundle import META_FILE, PROGRAM_FILE, BundleMeta, save_bundle
from bastion.models.wrappers import register_bundle_wrapper
from bastion.tomlfile import read_toml

RECIPE_KEYS = {"kind", "name", "description", "validation", "transforms", "adaptive"}
DEFAULT_EOT_SAMPLES = 8


@dataclass(frozen=True)
class SanitizeStats:
    """What sanitising one batch did."""

    samples: int
    nonfinite_values_replaced: int   # NaN/Inf values the validation clamped into the bounds
    out_of_range_values_clamped: int
    mean_abs_change: float           # per value, between the (clamped) input and the output


@dataclass
class Sanitizer:
    validator: InputValidator = field(default_factory=InputValidator)
    transforms: list[Transform] = field(default_factory=list)
    eot_samples: int = DEFAULT_EOT_SAMPLES
    name: str = "sanitizer"
    description: str = ""

    @property
    def bounds(self) -> tuple[float, float]:
        return self.validator.bounds

    @property
    def randomized(self) -> bool:
        return any(t.randomized for t in self.transforms)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Validate, then apply each transform in order (no gradient path; see :class:`SanitizedModel`)."""
        with torch.no_grad():
            x = self.validate(x)
            for transform in self.transforms:
                x = transform.apply(x, self.bounds, generator)
        return x

    def sanitize_with_stats(self, x: torch.Tensor,
                            generator: torch.Generator | None = None) -> tuple[torch.Tensor, SanitizeStats]:
        """:meth:`__call__`, and what it changed."""
        lo, hi = self.bounds
        floats = x.is_floating_point()
        nonfinite = int((~torch.isfinite(x)).sum()) if floats else 0
        outside = int(((x < lo) | (x > hi)).sum()) if floats else 0
        clean = self(x, generator=generator)
        change = float((clean - x.float().nan_to_num(lo, hi, lo).clamp(lo, hi)).abs().mean()) if len(x) else 0.0
        return clean, SanitizeStats(samples=len(clean), nonfinite_values_replaced=nonfinite,
                                    out_of_range_values_clamped=outside, mean_abs_change=change)

    def adaptive_evaluation(self) -> list[str]:
        """How attacks evaluate a model behind this sanitiser, in words."""
        adaptive = [f"BPDA for {t.kind}" for t in self.transforms if not t.differentiable]
        if self.randomized:
            adaptive.append(f"EOT over {self.eot_samples} draws")
        return adaptive or ["plain gradients (every transform is differentiable)"]

    def validate(self, x: torch.Tensor) -> torch.Tensor:
        """The validation stage alone, plus the batch layout the transforms need."""
        x = self.validator(x)
        needs_images = [t.kind for t in self.transforms if t.needs_images]
        if needs_images and x.dim() != 4:
            raise DataError(f"{', '.join(needs_images)} need image batches shaped (N, C, H, W), "
                            f"got shape {tuple(x.shape)}")
        return x

    def to_dict(self) -> dict[str, Any]:
        """The recipe as data (what a bundle's ``bastion.toml`` embeds under ``[sanitizer]``)."""
        return {"name": self.name, "description": self.description, "validation": self.validator.describe(),
                "transforms": [t.describe() for t in self.transforms],
                "adaptive": {"eot_samples": self.eot_samples}}


def sanitizer_from_dict(raw: Any, where: str) -> Sanitizer:
    """Build a :class:`Sanitizer` from recipe data; errors name ``where`` (a file or table) and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a sanitize recipe must be a table")
    if isinstance(raw.get("recipe"), dict):
        raise ConfigError(f"{where}: this is a training recipe (recipe.method = {raw['recipe'].get('method')!r}); "
                          "run it with bastion train, or give a sanitize-*.toml recipe")
    unknown = sorted(set(raw) - RECIPE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} "
                          f"(a sanitize recipe has {', '.join(sorted(RECIPE_KEYS))})")
    if raw.get("kind", "sanitize") != "sanitize":
        raise ConfigError(f"{where}: kind is {raw['kind']!r}, not a sanitize recipe")
    for key in ("name", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"{where}: {key} must be a string")
    specs = raw.get("transforms", [])
    if not isinstance(specs, list):
        raise ConfigError(f"{where}: transforms must be an array of tables ([[transforms]])")
    transforms = [build_transform(spec, f"{where}: transforms[{i}]") for i, spec in enumerate(specs)]
    validator = build_validator(raw.get("validation"), f"{where}: validation")
    adaptive = raw.get("adaptive", {})
    if not isinstance(adaptive, dict) or set(adaptive) - {"eot_samples"}:
        raise ConfigError(f"{where}: adaptive must be a table with only eot_samples")
    eot = adaptive.get("eot_samples", DEFAULT_EOT_SAMPLES)
    if not isinstance(eot, int) or isinstance(eot, bool) or not 1 <= eot <= 1024:
        raise ConfigError(f"{where}: adaptive.eot_samples must be an integer from 1 to 1024, got {eot!r}")
    if not transforms and raw.get("validation") is None:
        raise ConfigError(f"{where}: the recipe does nothing: add at least one [[transforms]] table, or a "
                          "[validation] section (bounds, input shape, what to do with out-of-range and NaN/Inf values)")
    return Sanitizer(validator=validator, transforms=transforms, eot_samples=eot,
                     name=raw.get("name", Path(where).stem), description=raw.get("description", ""))


def load_sanitizer(name_or_path: str | Path) -> Sanitizer:
    """Load a sanitize recipe by name (``sanitize-bitdepth``) or by path."""
    path = resolve("defenses", name_or_path)
    return sanitizer_from_dict(read_toml(path, ConfigError), str(path))


class SanitizedModel(nn.Module):
    """``model`` behind ``sanitizer``, with the gradient path an adaptive attack needs.

    - Non-differentiable transforms use BPDA: forward applies the transform, backward is
      the identity (Athalye et al. 2018).
    - If any transform is random, forward averages the class probabilities of
      ``eot_samples`` independent draws and returns their log (EOT), so both the
      prediction and the gradient are expectations rather than one lucky draw.
      ``eot_samples`` defaults to the recipe's value (1 when nothing is random).
    """

    def __init__(self, model: nn.Module, sanitizer: Sanitizer, *, eot_samples: int | None = None,
                 seed: int | None = 0) -> None:
        super().__init__()
        self.model = model
        self.sanitizer = sanitizer
        if eot_samples is None:
            eot_samples = sanitizer.eot_samples if sanitizer.randomized else 1
        if eot_samples < 1:
            raise ConfigError(f"eot_samples must be >= 1, got {eot_samples}")
        self.eot_samples = int(eot_samples)
        self.seed = seed
        self._generator: torch.Generator | None = None

    def sanitize(self, x: torch.Tensor) -> torch.Tensor:
        """One draw of the sanitiser, differentiable end to end (BPDA where needed)."""
        generator = self._generator_for(x.device)
        bounds = self.sanitizer.bounds
        x = self.sanitizer.validate(x)
        for transform in self.sanitizer.transforms:
            x = apply_for_attack(transform, x, bounds, generator)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.eot_samples
        if n == 1:
            return self.model(self.sanitize(x))
        batch = len(x)
        logits = self.model(self.sanitize(x.repeat(n, *[1] * (x.dim() - 1))))
        log_probs = torch.log_softmax(logits, dim=1).view(n, batch, -1)
        return torch.logsumexp(log_probs, dim=0) - math.log(n)

    def _generator_for(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None or not self.sanitizer.randomized:
            return None
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator


def save_sanitized_bundle(loaded: Any, sanitizer: Sanitizer, out_dir: str | Path) -> Path:
    """Write a bundle of ``loaded`` (a bundle or zoo model) whose ``bastion.toml`` embeds ``sanitizer``.

    Loading that bundle gives a :class:`SanitizedModel`, so ``bastion attack`` and ``bastion bench``
    evaluate model and sanitiser together, and a signature over the bundle covers the sanitiser too.
    """
    meta = getattr(loaded, "meta", None)
    if not isinstance(meta, BundleMeta):
        raise UsageError("a sanitised bundle is built from a zoo model or a bundle directory "
                         f"(which carry input shape and bounds); {loaded.source or loaded.name} is neither")
    if meta.sanitizer or isinstance(loaded.module, SanitizedModel):
        raise UsageError(f"{loaded.source}: this bundle already has a sanitizer; start from the bare model")
    if tuple(meta.bounds) != sanitizer.bounds:
        raise UsageError(f"the recipe's bounds {list(sanitizer.bounds)} differ from the model's {meta.bounds}")
    new_meta = dataclasses.replace(meta, name=f"{meta.name}+{sanitizer.name}", sanitizer=sanitizer.to_dict())
    if meta.format == "pt2":
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / PROGRAM_FILE, (Path(loaded.source) / PROGRAM_FILE).read_bytes())
        atomic_write_bytes(out / META_FILE, tomli_w.dumps(dataclasses.asdict(new_meta)).encode())
        return out
    return save_bundle(loaded.module, out_dir, new_meta)


def _wrap_sanitized_bundle(module: nn.Module, recipe: Any, where: str) -> SanitizedModel:
    """What a bundle with a ``[sanitizer]`` section loads as (see bastion.models.wrappers)."""
    return SanitizedModel(module, sanitizer_from_dict(recipe, where))


register_bundle_wrapper("sanitizer", _wrap_sanitized_bundle)
