"""Input validation, the first stage of every sanitiser: shape, dtype, range, NaN/Inf.

A recipe picks, per problem, whether to ``reject`` the batch with a clear error or to
``clamp`` it into a valid one (NaN becomes the lower bound, +/-Inf the nearest bound,
out-of-range values the nearest bound). Shape and dtype problems are always rejected:
there is no safe way to guess what a wrongly shaped input meant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bastion.errors import ConfigError, DataError

ACTIONS = ("reject", "clamp")


@dataclass(frozen=True)
class InputValidator:
    bounds: tuple[float, float] = (0.0, 1.0)
    #: Per-sample shape, e.g. (1, 28, 28); None accepts any shape.
    input_shape: tuple[int, ...] | None = None
    out_of_range: str = "reject"
    nonfinite: str = "reject"

    def __post_init__(self) -> None:
        problem = settings_problem(self.bounds, self.out_of_range, self.nonfinite)
        if problem:
            raise ConfigError(f"input validator: {problem}")

    def __call__(self, x: Any) -> torch.Tensor:
        """Return a float tensor that satisfies the validator, or raise :class:`DataError`."""
        if not isinstance(x, torch.Tensor):
            raise DataError(f"input must be a torch tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise DataError(f"input must hold floats, got {x.dtype}; convert images to float in "
                            f"[{self.bounds[0]}, {self.bounds[1]}] first")
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise DataError(f"input samples have shape {tuple(x.shape[1:])}, expected {self.input_shape} "
                            "(batch dimension first)")
        lo, hi = self.bounds
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            if self.nonfinite == "reject":
                bad = int((~finite).sum())
                raise DataError(f"input contains {bad} NaN/Inf value(s); clean the data or set "
                                "validation.nonfinite = \"clamp\" in the recipe")
            x = torch.nan_to_num(x, nan=lo, posinf=hi, neginf=lo)
        if self.out_of_range == "reject":
            outside = (x < lo) | (x > hi)
            if bool(outside.any()):
                raise DataError(f"input values span [{x.min().item():.4g}, {x.max().item():.4g}], outside the "
                                f"bounds [{lo}, {hi}]; rescale the data or set validation.out_of_range = "
                                "\"clamp\" in the recipe")
            return x
        # Clamp through a straight-through estimator: an attack's gradient must not vanish
        # just because a point sits on the boundary.
        clamped = x.clamp(lo, hi)
        return x + (clamped - x).detach() if x.requires_grad else clamped

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bounds": list(self.bounds), "out_of_range": self.out_of_range,
                               "nonfinite": self.nonfinite}
        if self.input_shape is not None:
            out["input_shape"] = list(self.input_shape)
        return out


def build_validator(spec: Any, where: str) -> InputValidator:
    """Build from a recipe's ``[validation]`` table; ``where`` names the table in errors."""
    if spec is None:
        return InputValidator()
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: must be a table")
    allowed = {"bounds", "input_shape", "out_of_range", "nonfinite"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    kwargs: dict[str, Any] = {}
    if "bounds" in spec:
        bounds = spec["bounds"]
        if (not isinstance(bounds, list) or len(bounds) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)):
            raise ConfigError(f"{where}.bounds: expected two numbers [lo, hi], got {bounds!r}")
        kwargs["bounds"] = (float(bounds[0]), float(bounds[1]))
    if "input_shape" in spec:
        shape = spec["input_shape"]
        if not isinstance(shape, list) or not shape or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise ConfigError(f"{where}.input_shape: expected a list of positive integers, got {shape!r}")
        kwargs["input_shape"] = tuple(shape)
    for key in ("out_of_range", "nonfinite"):
        if key in spec:
            if spec[key] not in ACTIONS:
                raise ConfigError(f"{where}.{key}: expected \"reject\" or \"clamp\", got {spec[key]!r}")
            kwargs[key] = spec[key]
    problem = settings_problem(kwargs.get("bounds", InputValidator.bounds),
                               kwargs.get("out_of_range", "reject"), kwargs.get("nonfinite", "reject"))
    if problem:
        raise ConfigError(f"{where}: {problem}")
    return InputValidator(**kwargs)


def settings_problem(bounds: tuple[float, float], out_of_range: str, nonfinite: str) -> str | None:
    """What is wrong with a validator's settings, or None."""
    for key, value in (("out_of_range", out_of_range), ("nonfinite", nonfinite)):
        if value not in ACTIONS:
            return f"{key} must be reject or clamp, got {value!r}"
    lo, hi = bounds
    if not lo < hi:
        return f"bounds must be [lo, hi] with lo < hi, got {list(bounds)}"
    return None
