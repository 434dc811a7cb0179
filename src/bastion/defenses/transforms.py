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
"""

from __future__ import annotations

import io
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from bastion.errors import ConfigError


class Transform:
    """Base class: subclasses set :attr:`kind`, the two flags, and implement :meth:`apply`."""

    kind: ClassVar[str] = ""
    differentiable: ClassVar[bool] = True
    randomized: ClassVar[bool] = False
    #: Works on image batches (N, C, H, W) only; other transforms accept any batch shape.
    needs_images: ClassVar[bool] = False

    def apply(self, x: torch.Tensor, bounds: tuple[float, float],
              generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, **self.params()}


class BitDepth(Transform):
    """Quantise each value to ``2**bits`` evenly spaced levels across the bounds (Xu et al. 2018).

    Idempotent: quantised values are already on the grid. Its gradient is zero almost
    everywhere, so it is not differentiable in any useful sense.
    """

    kind = "bit-depth"
    differentiable = False

    def __init__(self, bits: int = 4) -> None:
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
            raise ValueError(f"bits must be an integer from 1 to 16, got {bits!r}")
        self.bits = bits

    def apply(self, x, bounds, generator=None):
        lo, hi = bounds
        levels = 2 ** self.bits - 1
        unit = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
        return torch.round(unit * levels) / levels * (hi - lo) + lo

    def params(self):
        return {"bits": self.bits}


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

    def __init__(self, size: int = 2) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or not 2 <= size <= 15:
            raise ValueError(f"size must be an integer from 2 to 15, got {size!r}")
        self.size = size

    def apply(self, x, bounds, generator=None):
        k = self.size
        before, after = (k - 1) // 2, k // 2
        mode = "reflect" if min(x.shape[-2:]) > after else "replicate"
        padded = F.pad(x, (before, after, before, after), mode=mode)
        windows = padded.unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H, W, k, k)
        # torch.median takes the lower of the two middle values for even windows.
        return windows.reshape(*x.shape, k * k).median(dim=-1).values

    def params(self):
        return {"size": self.size}


class JPEG(Transform):
    """JPEG encode and decode each image at ``quality`` (Pillow; 1 or 3 channels).

    Round-trips through 8-bit pixels and a lossy codec, so autograd cannot pass through it.
    """

    kind = "jpeg"
    differentiable = False
    needs_images = True

    def __init__(self, quality: int = 75) -> None:
        if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 95:
            raise ValueError(f"quality must be an integer from 1 to 95, got {quality!r}")
        self.quality = quality

    def apply(self, x, bounds, generator=None):
        from PIL import Image

        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"jpeg needs images shaped (N, 1 or 3, H, W), got {tuple(x.shape)}")
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

    def params(self):
        return {"quality": self.quality}


class GaussianNoise(Transform):
    """Add N(0, sigma^2) noise per value, then clip to the bounds. Random, hence EOT."""

    kind = "gaussian-noise"
    differentiable = True
    randomized = True

    def __init__(self, sigma: float = 0.1) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma <= 10:
            raise ValueError(f"sigma must be a number in (0, 10], got {sigma!r}")
        self.sigma = float(sigma)

    def apply(self, x, bounds, generator=None):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + self.sigma * noise).clamp(*bounds)

    def params(self):
        return {"sigma": self.sigma}


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
    try:
        return TRANSFORMS[kind](**params)
    except TypeError:
        import inspect

        allowed = [p for p in inspect.signature(TRANSFORMS[kind]).parameters]
        unknown = sorted(set(params) - set(allowed))
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} for {kind} "
                          f"(allowed: {', '.join(allowed)})") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


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
