"""Models: loading and saving them without unpickling, the bundle format, the bundled zoo.

Owns: the model bundle (``bastion.toml`` + weights, :mod:`~bastion.models.bundle`), the
formats a module is built from (:mod:`~bastion.models.formats`; ONNX files in
:mod:`~bastion.models.onnx`), what a loaded model is (:mod:`~bastion.models.loaded`),
resolving a model reference (:func:`load_model`), the checks before attacks use a model
and the accelerations they may use (:mod:`~bastion.models.preparation`,
:mod:`~bastion.models.acceleration`), the registered architectures and the zoo. Imports
only the bottom layer (``errors``, ``threat``, ``data``, ``fsutil``, ``tomlfile``,
``catalog``): a bundle whose metadata
needs a higher layer (a sanitiser) is wrapped through the hook in
:mod:`~bastion.models.wrappers`, never by importing that layer.

The names below load on first use, so importing :mod:`bastion.models.wrappers` (which the
composition root does at start-up) costs no torch import.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Acceleration": "bastion.models.acceleration", "accelerate": "bastion.models.acceleration",
    "ARCHITECTURES": "bastion.models.architectures",
    "BundleMeta": "bastion.models.bundle", "load_bundle": "bastion.models.bundle", "save_bundle": "bastion.models.bundle",
    "LoadedModel": "bastion.models.loaded", "as_module": "bastion.models.loaded", "unwrap": "bastion.models.loaded",
    "load_model": "bastion.models.loading",
    "Prepared": "bastion.models.preparation", "prepare": "bastion.models.preparation",
    "ZOO": "bastion.models.zoo", "zoo_entries": "bastion.models.zoo",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bastion.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
