"""Resolve a model reference to an ``nn.Module`` in eval mode, without unpickling anything.

A reference is one of: a zoo name, a bundle directory, a ``.pt2`` torch.export
program, an ``.onnx`` file (:mod:`bastion.models.onnx`), ``package.module:factory``
together with a ``.safetensors`` weights file, an ``nn.Module``, or an ART
``PyTorchClassifier``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bastion.errors import ModelError
from bastion.models.bundle import load_bundle
from bastion.models.formats import (PICKLE_SUFFIXES, build_architecture, load_onnx_file, load_program,
                                    load_safetensors_into, load_weights_into)
from bastion.models.loaded import LoadedModel, as_module, set_eval, unwrap
from bastion.models.zoo import ZOO, zoo_path

# Also importable from here (the access layer's safe loading uses them).
__all__ = ["LoadedModel", "as_module", "build_architecture", "load_model", "load_program", "load_safetensors_into",
           "load_weights_into", "unwrap"]


def load_model(ref: Any, *, weights: str | Path | None = None, device: str | torch.device = "cpu",
               trust_code: bool = False, onnx_runtime: bool = False) -> LoadedModel:
    """Resolve ``ref`` (see module docstring) to a :class:`LoadedModel` on ``device``.

    An ONNX model (a file, or a bundle of format ``onnx``) is converted to torch, or with
    ``onnx_runtime`` run on onnxruntime (forward only); other models ignore ``onnx_runtime``.
    """
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
            loaded = load_bundle(path, trust_code=trust_code, onnx_runtime=onnx_runtime)
        elif path.suffix == ".pt2":
            loaded = LoadedModel(module=load_program(path), name=path.stem, source=str(path))
        elif path.suffix == ".onnx" and path.exists():
            loaded = load_onnx_file(path, onnx_runtime)
        elif ":" in text and not path.exists():
            if weights is None:
                raise ModelError(f"{text}: a factory reference needs --weights FILE.safetensors")
            module = build_architecture(text, None, trust_code=True)
            load_weights_into(module, Path(weights))
            loaded = LoadedModel(module=module, name=text, source=text)
            weights = None  # used
        elif path.suffix in PICKLE_SUFFIXES:
            raise ModelError(f"{path}: a pickled checkpoint is not loaded as a model (unpickling a whole "
                             "model runs code); pass package.module:factory --weights FILE, or a .pt2")
        elif not path.exists() and (path.suffix or "/" in text):
            raise ModelError(f"{text}: no such file or directory")
        else:
            names = ", ".join(ZOO)
            raise ModelError(f"unknown model {text!r}: use a zoo name ({names}), a bundle directory, "
                             "a .pt2 or .onnx file, or package.module:factory with --weights")
    if weights is not None:  # a bundle, zoo model or program carries its own: silently ignoring it would mislead
        raise ModelError(f"--weights {weights}: only a package.module:factory reference takes a weights file; "
                         f"{loaded.source or loaded.name} carries its own")
    set_eval(loaded.module)
    loaded.module.to(device)
    return loaded
