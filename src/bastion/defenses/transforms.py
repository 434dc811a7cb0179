"""Input transforms for sanitisers and detectors: bit-depth reduction, median smoothing,
JPEG compression, Gaussian noise.

Each transform maps a batch ``(N, C, H, W)`` inside ``bounds`` to a batch of the same
shape inside ``bounds``, and declares two facts the adaptive evaluation relies on:

- ``differentiable``: autograd through :meth:`Transform.apply` gives a useful gradient.
  When False, :class:`~bastion.defenses.sanitizer.SanitizedModel` uses BPDA
  (straight-through: backward is the identity) so an attack is not fooled by a
  zero or missing gradient.
- ``randomized``: two calls on the same input may differ. When True the attack must
  use EOT (average over several draws).

Each transform declares its parameters (:class:`~bastion.attacks.params.Params`, the
same declarations attacks use), so a recipe, the detector's command line and Python
callers get the same check and the same one-line :class:`~bastion.errors.ConfigError`.
"""

from __future__ import annotations

import io
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from bastion.attacks.params import Params, integer, number
from bastion.errors import ConfigError, DataError


class Transform:
    """Base class: subclasses set :attr:`kind`, the two flags and :attr:`PARAMS`, and implement :meth:`apply`.

    The constructor takes the declared parameters, positionally in declared order or by name.
    """

    kind: ClassVar[str] = ""
    differentiable: ClassVar[bool] = True
    randomized: ClassVar[bool] = False
    #: Works on image batches (N, C, H, W) only; other transforms accept any batch shape.
    needs_images: ClassVar[bool] = False
    #: The transform's parameters; each becomes an attribute of the same name.
    PARAMS: ClassVar[Params] = Params()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.PARAMS.check_free(cls, Transform)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        values = self.PARAMS.bind(args, kwargs, ConfigError, self.kind)
        for key, value in self.PARAMS.resolve(values, ConfigError, self.kind).items():
            setattr(self, key, value)

    def apply(self, x: torch.Tensor, bounds: tuple[float, float],
              generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.PARAMS.names}

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, **self.params()}

    def label(self) -> str:
        """``kind(param=value, ...)``, for people."""
        return f"{self.kind}({', '.join(f'{k}={v}' for k, v in self.params().items())})"


class BitDepth(Transform):
    """Quantise each value to ``2**bits`` evenly spaced levels across the bounds (Xu et al. 2018).

    Idempotent: quantised values are already on the grid. Its gradient is zero almost
    everywhere, so it is not differentiable in any useful sense.
    """

    kind = "bit-depth"
    differentiable = False
    PARAMS = Params(integer("bits", 4, 1, 16))

    def apply(self, x, bounds, generator=None):
        lo, hi = bounds
        levels = 2 ** self.bits - 1
        unit = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
        return torch.round(unit * levels) / levels * (hi - lo) + lo


class MedianSmooth(Transform):
    """Median over a ``size x size`` window per channel (a median filter, Xu et al. 2018).

    Even sizes pad one pixel more on the bottom/right, as in the original feature
    squeezing. Edges use reflection padding (replicate for images too small to reflect).
    The median selects one input value, so autograd passes the gradient to that value:
    sparse but genuine, hence differentiable. Not idempotent in general.
    """

    kind = "median"
    differentiable = True
    needs_images = True
    PARAMS = Params(integer("size", 2, 2, 15))

    def apply(self, x, bounds, generator=None):
        k = self.size
        before, after = (k - 1) // 2, k // 2
        mode = "reflect" if min(x.shape[-2:]) > after else "replicate"
        padded = F.pad(x, (before, after, before, after), mode=mode)
        windows = padded.unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H, W, k, k)
        # torch.median takes the lower of the two middle values for even windows.
        return windows.reshape(*x.shape, k * k).median(dim=-1).values


class JPEG(Transform):
    """JPEG encode and decode each image at ``quality`` (Pillow; 1 or 3 channels).

    Round-trips through 8-bit pixels and a lossy codec, so autograd cannot pass through it.
    """

    kind = "jpeg"
    differentiable = False
    needs_images = True
    PARAMS = Params(integer("quality", 75, 1, 95))

    def apply(self, x, bounds, generator=None):
        from PIL import Image  # heavy optional dependency: only when JPEG runs

        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise DataError(f"jpeg needs images shaped (N, 1 or 3, H, W), got {tuple(x.shape)}")
        lo, hi = bounds
        pixels = (((x.detach() - lo) / (hi - lo)).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        out = np.empty_like(pixels)
        for i, image in enumerate(pixels):
            array = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="JPEG", quality=self.quality)
            buffer.seek(0)
            decoded = np.asarray(Image.open(buffer))
            out[i] = decoded[None] if image.shape[0] == 1 else decoded.transpose(2, 0, 1)
        result = torch.from_numpy(out).to(device=x.device, dtype=x.dtype) / 255.0
        return result * (hi - lo) + lo


class GaussianNoise(Transform):
    """Add N(0, sigma^2) noise per value, then clip to the bounds. Random, hence EOT."""

    kind = "gaussian-noise"
    differentiable = True
    randomized = True
    PARAMS = Params(number("sigma", 0.1, 0, 10, low_open=True))

    def apply(self, x, bounds, generator=None):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + self.sigma * noise).clamp(*bounds)


TRANSFORMS: dict[str, type[Transform]] = {
    cls.kind: cls for cls in (BitDepth, MedianSmooth, JPEG, GaussianNoise)
}


def build_transform(spec: dict[str, Any], where: str) -> Transform:
    """Build a transform from a recipe table ``{type = "...", <params>}``; ``where`` names it in errors."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: each transform must be a table with a 'type' key")
    kind = spec.get("type")
    if kind not in TRANSFORMS:
        raise ConfigError(f"{where}.type: unknown transform {kind!r}; use one of {', '.join(TRANSFORMS)}")
    params = {k: v for k, v in spec.items() if k != "type"}
    schema = TRANSFORMS[kind].PARAMS
    unknown = sorted(set(params) - set(schema.names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} for {kind} "
                          f"(allowed: {', '.join(schema.names)})")
    problem = schema.find_problem(params)
    if problem:
        raise ConfigError(f"{where}: {problem.message}")
    return TRANSFORMS[kind](**params)


def apply_for_attack(transform: Transform, x: torch.Tensor, bounds: tuple[float, float],
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply ``transform`` keeping a gradient path an attack can follow.

    A differentiable transform runs under autograd as is; any other uses BPDA
    (Athalye et al. 2018): the forward value is the transform's output, the backward
    pass is the identity, so a broken gradient cannot masquerade as robustness.
    """
    if transform.differentiable:
        return transform.apply(x, bounds, generator)
    out = transform.apply(x.detach(), bounds, generator)
    return x + (out - x).detach()
