"""The hook through which a higher layer wraps the module of a bundle whose metadata asks for it.

A bundle's ``bastion.toml`` may carry a section that changes what the model *is*: today
``[sanitizer]`` (a sanitiser recipe the model runs behind). The models layer cannot
build that wrapper itself (it lives in :mod:`bastion.defenses`, above models), so the
owner registers a function for its section with :func:`register_bundle_wrapper` when it
is imported, and :func:`~bastion.models.bundle.load_bundle` calls it.

So that loading works without the caller importing the owner first, the composition
root (``bastion/__init__.py``) *declares* which module registers each section
(:func:`declare_bundle_wrapper`); that module is imported the first time a bundle with
the section loads. A section with neither a registered nor a declared wrapper refuses
to load (fail closed): a model without the sanitiser its bundle names is not that model.

This module imports nothing heavy, so declaring costs no start-up time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

#: wrap(module, section value from bastion.toml, where (names the file in errors)) -> the wrapped module
BundleWrapper = Callable[[Any, Any, str], Any]

_REGISTERED: dict[str, BundleWrapper] = {}
_DECLARED: dict[str, str] = {}


def register_bundle_wrapper(section: str, wrap: BundleWrapper) -> None:
    """``wrap`` builds the model of bundles whose metadata has ``section``."""
    _REGISTERED[section] = wrap


def declare_bundle_wrapper(section: str, module: str) -> None:
    """Importing ``module`` (a dotted name) registers the wrapper for ``section``."""
    _DECLARED[section] = module


def bundle_wrapper(section: str) -> BundleWrapper | None:
    """The wrapper registered for ``section``, importing its declared module first if need be."""
    if section not in _REGISTERED and section in _DECLARED:
        importlib.import_module(_DECLARED[section])
    return _REGISTERED.get(section)
