"""Threat models as values: a norm, one or more eps, and the valid input range.

An eps is meaningful only up to the size of the input box: beyond the span ``hi - lo`` in Linf, or
beyond the box's diagonal ``span * sqrt(dim)`` in L2, the ball already holds every valid input, so
a larger eps changes nothing but can overflow float32 arithmetic. Both are refused
(:func:`max_eps`): Linf when the threat model is made, L2 once the sample shape is known
(:meth:`ThreatModel.check_sample_shape`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bastion.errors import ThreatModelError

NORMS = ("linf", "l2")
#: Relative slack on the eps maxima, so that an eps computed as exactly the span (or the diagonal)
#: in floating point is not refused for its last bit.
_EPS_SLACK = 1e-9


def max_eps(norm: str, bounds: tuple[float, float], sample_shape: tuple[int, ...] | None = None) -> float:
    """The largest meaningful eps: the span of the bounds for Linf, the diagonal of the input box
    (``span * sqrt(dim)``) for L2 (infinite for L2 when the sample shape is not known)."""
    span = float(bounds[1]) - float(bounds[0])
    if norm == "linf":
        return span
    if sample_shape is None:
        return math.inf
    return span * math.sqrt(math.prod(sample_shape))


@dataclass(frozen=True)
class ThreatModel:
    """Where an adversary may move an input: ``||x_adv - x||_norm <= eps`` and ``lo <= x_adv <= hi``.

    ``eps`` may be a single number or a sequence (an eps sweep); it is stored as a sorted tuple.
    """

    norm: str = "linf"
    eps: float | tuple[float, ...] = 0.3
    bounds: tuple[float, float] = (0.0, 1.0)
    epsilons: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ThreatModelError(f"unknown norm {self.norm!r}: use one of {', '.join(NORMS)}")
        raw = self.eps if isinstance(self.eps, (list, tuple)) else (self.eps,)
        try:
            values = tuple(sorted({float(e) for e in raw}))
        except (TypeError, ValueError):
            raise ThreatModelError(f"eps must be a number or a list of numbers, got {self.eps!r}") from None
        if not values:
            raise ThreatModelError("eps list is empty: give at least one eps")
        for e in values:
            if not math.isfinite(e) or e < 0:
                raise ThreatModelError(f"eps must be a finite number >= 0, got {e}")
        lo, hi = (float(b) for b in self.bounds)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi and math.isfinite(hi - lo)):
            raise ThreatModelError(f"bounds must be two finite numbers lo < hi, got {self.bounds!r}")
        object.__setattr__(self, "eps", values[0] if len(values) == 1 else values)
        object.__setattr__(self, "bounds", (lo, hi))
        object.__setattr__(self, "epsilons", values)
        self._check_max(None)

    def check_sample_shape(self, sample_shape: tuple[int, ...]) -> None:
        """Refuse an eps larger than :func:`max_eps` for samples of this shape (the L2 bound needs it)."""
        self._check_max(tuple(sample_shape))

    def _check_max(self, sample_shape: tuple[int, ...] | None) -> None:
        limit = max_eps(self.norm, self.bounds, sample_shape)
        largest = self.epsilons[-1]
        if largest > limit * (1 + _EPS_SLACK):
            lo, hi = self.bounds
            what = (f"the span of the input bounds [{lo:g}, {hi:g}]" if self.norm == "linf" else
                    f"the diagonal of the input box [{lo:g}, {hi:g}]^{math.prod(sample_shape):,} (span x sqrt(dim))")
            raise ThreatModelError(f"{self.norm} eps {largest:g} is larger than {limit:.6g}, {what}: a ball that "
                                   "large already holds every valid input; give an eps of at most that")

    @property
    def single(self) -> float:
        """The eps of a single-eps threat model (raises for a sweep)."""
        if len(self.epsilons) != 1:
            raise ThreatModelError(f"this threat model holds {len(self.epsilons)} eps values; pick one with at_eps()")
        return self.epsilons[0]

    def at_eps(self, eps: float) -> ThreatModel:
        """The same threat model at one eps."""
        return ThreatModel(norm=self.norm, eps=eps, bounds=self.bounds)

    def project(self, x: torch.Tensor, x_adv: torch.Tensor, eps: float | None = None) -> torch.Tensor:
        """Nearest point to ``x_adv`` inside the eps ball around ``x`` and inside the input bounds.

        For L2 the ball projection is followed by clamping, which can only shrink the
        perturbation, so the result stays inside both sets.
        """
        eps = self.single if eps is None else eps
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-eps, eps)
        else:
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            factor = (eps / norms).clamp(max=1.0)
            delta = delta * factor.view(-1, *([1] * (delta.dim() - 1)))
        return (x + delta).clamp(*self.bounds)

    def distance(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Per-sample distance in this threat model's norm."""
        delta = (x_adv - x).flatten(1)
        return delta.abs().amax(dim=1) if self.norm == "linf" else delta.norm(dim=1)

    def to_dict(self) -> dict:
        return {"norm": self.norm, "eps": list(self.epsilons), "bounds": list(self.bounds)}
