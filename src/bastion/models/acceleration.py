"""Cheaper model evaluation for the attack loops: ``torch.compile``, channels-last memory, bf16 autocast.

All three are opt-in, and none decides what a benchmark counts:

- **Checked before use.** :func:`accelerate` applies the options one at a time (channels-last,
  then bf16, then compile) and after each predicts the evaluated samples: the accelerated model
  must agree with the fp32 eager one on at least :data:`MIN_AGREEMENT` (99.9%) of them, else it
  refuses with one line naming the option (no silent fallback: a run asked to be accelerated
  either is, or says why not). A model that gives input gradients must still give them, finite
  and matching eager's (within a tolerance; under bf16, in direction).
- **Re-checked in fp32 eager.** :class:`AcceleratedModule` keeps the untouched module as
  :attr:`~AcceleratedModule.reference`; :func:`reference_of` returns it, and the benchmark's
  re-check of every adversarial (:func:`bastion.evaluation.runner.confirm_adversarial`) and its
  clean accuracy use that, never the accelerated copy. Acceleration only decides where the
  attacks look.

``compile`` uses ``torch.compile(dynamic=True)``: attacks shrink their batches as samples fall,
and batches are padded to at least :data:`MIN_COMPILED_BATCH` rows, so one graph serves every
batch size instead of recompiling for small ones (torch specialises sizes 0 and 1, and CPU
convolutions below 16). On a CPU it needs a C++ compiler. ``bf16`` autocasts to bfloat16 where
the device has it (CPU autocast exists in torch; whether it is faster depends on the CPU's bf16
instructions: ``benchmarks/attacks.py`` measures it).
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass

import torch
from torch import nn

from bastion.errors import ModelError, first_line
from bastion.models.loaded import device_of
from bastion.models.rows import pad_rows

#: Share of the evaluated samples on which an accelerated model must predict what fp32 eager does.
MIN_AGREEMENT = 0.999
#: Batches a compiled model sees are padded to at least this many rows (see the module docstring).
MIN_COMPILED_BATCH = 16
#: Samples the gradient check runs on (it also compiles the gradient graph before the attacks start).
GRADIENT_CHECK_SAMPLES = 16
#: Largest input-gradient difference from fp32 eager under compile or channels-last, relative to the largest gradient.
GRADIENT_TOLERANCE = 1e-3
#: Least cosine between bf16 and fp32 eager input gradients (the direction the attacks step along).
MIN_BF16_GRADIENT_COSINE = 0.9
#: The options in the order they are applied and checked.
ORDER = ("channels-last", "bf16", "compile")


@dataclass(frozen=True)
class Acceleration:
    """Which accelerations to use (all off by default)."""

    compile: bool = False
    channels_last: bool = False
    bf16: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        on = {"channels-last": self.channels_last, "bf16": self.bf16, "compile": self.compile}
        return tuple(name for name in ORDER if on[name])

    @classmethod
    def of(cls, names: tuple[str, ...] | list[str]) -> Acceleration:
        unknown = set(names) - set(ORDER)
        if unknown:
            raise ModelError(f"unknown acceleration {sorted(unknown)[0]!r} (use {', '.join(ORDER)})")
        return cls(compile="compile" in names, channels_last="channels-last" in names, bf16="bf16" in names)


@dataclass(frozen=True)
class AgreementCheck:
    """Predictions of the model under ``accelerations`` against fp32 eager on ``samples`` samples."""

    accelerations: tuple[str, ...]
    agreeing: int
    samples: int

    def to_dict(self) -> dict:
        return {"check": "agreement with fp32 eager", "accelerations": list(self.accelerations),
                "agreeing": self.agreeing, "samples": self.samples}


class AcceleratedModule(nn.Module):
    """An accelerated copy of a model for the attack loops, with the untouched model as its reference.

    Outputs are float32 whatever the autocast computed in, and always one row per input row.
    """

    def __init__(self, reference: nn.Module, fast: nn.Module, acceleration: Acceleration,
                 checks: tuple[AgreementCheck, ...] = ()) -> None:
        super().__init__()
        self.reference = reference
        self.fast = fast
        self.acceleration = acceleration
        self.checks = checks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = len(x)
        if self.acceleration.compile:
            x = pad_rows(x, MIN_COMPILED_BATCH)
        if self.acceleration.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.acceleration.bf16:
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                out = self.fast(x)
        else:
            out = self.fast(x)
        return out[:rows].float()


def reference_of(model: nn.Module) -> nn.Module:
    """The fp32 eager module behind ``model`` (``model`` itself when it is not accelerated)."""
    return model.reference if isinstance(model, AcceleratedModule) else model


def accelerations_of(model: nn.Module) -> tuple[str, ...]:
    return model.acceleration.names if isinstance(model, AcceleratedModule) else ()


def accelerate(module: nn.Module, x: torch.Tensor, acceleration: Acceleration, *, batch_size: int = 256,
               min_agreement: float = MIN_AGREEMENT) -> nn.Module:
    """``module`` accelerated as asked, after the checks of the module docstring on the samples ``x``;
    ``module`` itself when nothing is asked. Raises :class:`~bastion.errors.ModelError` when a check fails."""
    if not acceleration.names:
        return module
    flags = " ".join(f"--{name}" for name in acceleration.names)
    if any(getattr(m, "forward_only", False) for m in module.modules()):
        raise ModelError(f"{flags}: the model runs on onnxruntime; accelerations apply to torch models")
    device = device_of(module)
    if acceleration.bf16 and not bf16_supported(device):
        raise ModelError(f"--bf16: the {device.type} device has no bfloat16 autocast here; run without --bf16")
    if acceleration.compile and device.type == "cpu" and not _cxx_compiler():
        raise ModelError("--compile: torch.compile on a CPU needs a C++ compiler (g++ or clang++ on PATH, or $CXX)")
    x = x.to(device)
    expected = _predictions(module, x, batch_size)
    try:
        fast = copy.deepcopy(module)
    except Exception as exc:  # a module holding something that cannot be copied
        raise ModelError(f"{flags}: the model cannot be copied for acceleration ({first_line(exc)})") from None
    applied: list[str] = []
    checks: list[AgreementCheck] = []
    for name in acceleration.names:
        applied.append(name)
        if name == "channels-last":
            fast = fast.to(memory_format=torch.channels_last)
        elif name == "compile":
            fast = torch.compile(fast, dynamic=True)
        candidate = AcceleratedModule(module, fast, Acceleration.of(applied))
        try:
            got = _predictions(candidate, x, batch_size)
        except Exception as exc:  # compiler and backend failures come in many types
            raise ModelError(f"--{name}: the model fails under it ({first_line(exc)}); run without --{name}") from None
        agreeing = int((got == expected).sum())
        checks.append(AgreementCheck(tuple(applied), agreeing, len(x)))
        if agreeing < min_agreement * len(x):
            raise ModelError(f"--{name}: predictions agree with fp32 eager on {agreeing} of {len(x)} samples "
                             f"({agreeing / max(len(x), 1):.2%}; at least {min_agreement:.1%} needed); "
                             f"run without --{name}")
    accelerated = AcceleratedModule(module, fast, acceleration, tuple(checks))
    _check_gradients(module, accelerated, x[:GRADIENT_CHECK_SAMPLES], flags)
    return accelerated


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def _check_gradients(reference: nn.Module, accelerated: AcceleratedModule, x: torch.Tensor, flags: str) -> None:
    """A model that gives input gradients must still give them once accelerated: finite, and in fp32
    (compile, channels-last) equal to eager's within :data:`GRADIENT_TOLERANCE` of their scale.
    bfloat16 keeps 8 bits of mantissa, so under ``--bf16`` only the direction is asked to survive."""
    eager = _input_gradient(reference, x) if len(x) else None
    if eager is None:
        return  # no gradient to keep (a forward-only model): the attacks' own handling applies
    try:
        grad = _input_gradient(accelerated, x, strict=True)
    except Exception as exc:
        raise ModelError(f"{flags}: the model gives no input gradient under it ({first_line(exc)})") from None
    if not torch.isfinite(grad).all():
        raise ModelError(f"{flags}: input gradients are not finite under it; run without {flags}")
    if accelerated.acceleration.bf16:
        cosine = nn.functional.cosine_similarity(grad.flatten(), eager.flatten(), dim=0, eps=1e-12)
        agrees, what = bool(cosine >= MIN_BF16_GRADIENT_COSINE), f"cosine {float(cosine):.3f} to eager's"
    else:
        difference = float((grad - eager).abs().max())
        agrees = difference <= GRADIENT_TOLERANCE * max(float(eager.abs().max()), 1e-12)
        what = f"max difference {difference:.2e} from eager's"
    if not agrees:
        raise ModelError(f"{flags}: input gradients differ from fp32 eager under it ({what}); run without {flags}")


def _input_gradient(model: nn.Module, x: torch.Tensor, strict: bool = False) -> torch.Tensor | None:
    x = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(model(x).float().logsumexp(dim=1).sum(), x)
    except RuntimeError:
        if strict:
            raise
        return None
    return grad


def _predictions(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(chunk).argmax(dim=1) for chunk in x.split(batch_size)]) if len(x) else \
            torch.empty(0, dtype=torch.long, device=x.device)


def _cxx_compiler() -> str | None:
    return shutil.which(os.environ.get("CXX") or "g++") or shutil.which("clang++") or shutil.which("c++")
