"""Resolve a model reference to an ``nn.Module`` in eval mode, without unpickling anything.

A reference is one of: a zoo name, a bundle directory, a ``.pt2`` torch.export
program, ``package.module:factory`` together with a ``.safetensors`` weights file,
an ``nn.Module``, or an ART ``PyTorchClassifier``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bastion.errors import ModelError
from bastion.models.architectures import ARCHITECTURES

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")


@dataclass
class LoadedModel:
    module: nn.Module
    name: str
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    source: str = ""
    meta: Any = None


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
    _set_eval(module)
    return module


def load_model(ref: Any, *, weights: str | Path | None = None, device: str | torch.device = "cpu",
               trust_code: bool = False) -> LoadedModel:
    """Resolve ``ref`` (see module docstring) to a :class:`LoadedModel` on ``device``."""
    from bastion.models.bundle import load_bundle
    from bastion.models.zoo import ZOO, zoo_path

    if not isinstance(ref, (str, Path)):
        loaded = LoadedModel(module=as_module(ref), name=type(ref).__name__, source="object")
    else:
        text = str(ref)
        path = Path(text)
        if text in ZOO:
            if not (zoo_path(text) / "bastion.toml").is_file():
                raise ModelError(f"zoo model {text!r} has no weights in this install; see README (train_zoo)")
            loaded = load_bundle(zoo_path(text))
            loaded.source = f"zoo:{text}"
        elif path.is_dir():
            loaded = load_bundle(path, trust_code=trust_code)
        elif path.suffix == ".pt2":
            loaded = LoadedModel(module=load_program(path), name=path.stem, source=str(path))
        elif ":" in text and not path.exists():
            if weights is None:
                raise ModelError(f"{text}: a factory reference needs --weights FILE.safetensors")
            module = build_architecture(text, None, trust_code=True)
            load_weights_into(module, Path(weights))
            loaded = LoadedModel(module=module, name=text, source=text)
        elif path.suffix in PICKLE_SUFFIXES:
            raise ModelError(f"{path}: a pickled checkpoint is not loaded as a model (unpickling a whole "
                             "model runs code); pass package.module:factory --weights FILE, or a .pt2")
        elif not path.exists() and (path.suffix or "/" in text):
            raise ModelError(f"{text}: no such file or directory")
        else:
            names = ", ".join(ZOO)
            raise ModelError(f"unknown model {text!r}: use a zoo name ({names}), a bundle directory, "
                             "a .pt2 file, or package.module:factory with --weights")
    _set_eval(loaded.module)
    loaded.module.to(device)
    return loaded


def build_architecture(ref: str, num_classes: int | None, *, trust_code: bool) -> nn.Module:
    """Build a registered architecture, or (only with ``trust_code``) call ``package.module:factory``."""
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if ref in ARCHITECTURES:
        return ARCHITECTURES[ref](**kwargs)
    if ":" not in ref:
        raise ModelError(f"unknown architecture {ref!r}: use one of {', '.join(ARCHITECTURES)}")
    if not trust_code:
        raise ModelError(f"architecture {ref!r} would import code; pass trust_code=True "
                         "(CLI: --trust-code) if you trust its source")
    module_name, _, attr = ref.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ModelError(f"cannot import {ref!r}: {exc}") from None
    try:
        model = factory()
    except Exception as exc:  # user code: report, do not crash
        raise ModelError(f"{ref}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{ref}() returned {type(model).__name__}, not an nn.Module")
    return model


def load_weights_into(module: nn.Module, path: Path) -> None:
    """Load a state dict from .safetensors, or from a pickle checkpoint with ``weights_only=True`` only."""
    if not path.is_file():
        raise ModelError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        load_safetensors_into(module, path)
        return
    if path.suffix not in PICKLE_SUFFIXES:
        raise ModelError(f"{path}: weights must be .safetensors (or a .pt/.pth state dict)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch refuses unsafe globals with several exception types
        raise ModelError(f"{path}: refused by torch.load(weights_only=True) ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: expected a state dict of tensors")
    _load_state(module, state, path)


def load_safetensors_into(module: nn.Module, path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelError(f"{path}: no such weights file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a valid safetensors file ({exc})") from None
    _load_state(module, state, path)


def _load_state(module: nn.Module, state: dict, path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise ModelError(f"{path}: weights do not fit the architecture ({detail})") from None


def load_program(path: Path) -> nn.Module:
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many types for a corrupt archive
        raise ModelError(f"{path}: not a valid torch.export program ({type(exc).__name__}: {exc})") from None
    return program.module()


def _set_eval(module: nn.Module) -> None:
    try:
        module.eval()
    except (NotImplementedError, RuntimeError):
        pass  # torch.export modules refuse .eval(); they were exported in the mode they run in
    for p in module.parameters():
        p.requires_grad_(False)
