"""What a loaded model is, and the module inside anything a caller may hand over as a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bastion.errors import ModelError


@dataclass
class LoadedModel:
    """A model in eval mode with what bastion knows about it (from its bundle, where it has one)."""

    module: nn.Module
    name: str
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    source: str = ""
    meta: Any = None  # the bundle's BundleMeta, for bundles and zoo models


def unwrap(model: Any) -> nn.Module:
    """The ``nn.Module`` inside ``model`` (a module, a :class:`LoadedModel` or an ART ``PyTorchClassifier``),
    untouched. The one place that knows these wrappers."""
    if isinstance(model, LoadedModel):
        model = model.module
    elif not isinstance(model, nn.Module) and hasattr(model, "model") and isinstance(model.model, nn.Module):
        model = model.model  # ART PyTorchClassifier keeps the user's module here
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch nn.Module or ART PyTorchClassifier, got {type(model).__name__}")
    return model


def as_module(model: Any) -> nn.Module:
    """:func:`unwrap` ``model`` and switch the module to eval mode with its parameters frozen."""
    module = unwrap(model)
    set_eval(module)
    return module


def set_eval(module: nn.Module) -> None:
    try:
        module.eval()
    except (NotImplementedError, RuntimeError):
        pass  # torch.export modules refuse .eval(); they were exported in the mode they run in
    for p in module.parameters():
        p.requires_grad_(False)


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); the CPU for a module with neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")
