"""Building a model from what bastion reads without unpickling: an architecture name (or, only when
trusted, a ``package.module:factory``), safetensors weights or a ``weights_only`` state dict, and
``torch.export`` programs, ONNX files."""

from __future__ import annotations

import importlib
import logging
import stat
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from bastion.errors import ModelError, detail
from bastion.fsutil import file_kind
from bastion.models.architectures import ARCHITECTURES
from bastion.models.loaded import LoadedModel

#: Suffixes of pickle-based files: never loaded as whole models.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")


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
    _check_regular(path, "weights file")
    if path.suffix == ".safetensors":
        load_safetensors_into(module, path)
        return
    if path.suffix not in PICKLE_SUFFIXES:
        raise ModelError(f"{path}: weights must be .safetensors (or a .pt/.pth state dict)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on the pickle protocol: the refusal is the one line
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch refuses unsafe globals with several exception types
        raise ModelError(f"{path}: refused by torch.load(weights_only=True) ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: expected a state dict of tensors")
    _load_state(module, state, path)


def load_safetensors_into(module: nn.Module, path: Path) -> None:
    _check_regular(path, "weights file")
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
        summary = " ".join(line.strip() for line in first[:3])
        raise ModelError(f"{path}: weights do not fit the architecture ({summary})") from None


def _check_regular(path: Path, what: str) -> None:
    """Refuse a missing path, a directory, a FIFO or a device before anything opens it (a FIFO would block)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ModelError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise ModelError(f"{path}: is {file_kind(mode)}, not a model {what}")


#: torch's loggers that report (with a traceback) a file torch.export cannot read, before raising.
_TORCH_LOAD_LOGGERS = ("torch.export", "torch._export")


def load_program(path: Path) -> nn.Module:
    """The module of a ``torch.export`` program (a zip archive). Anything else, a pickle named
    ``.pt2`` included, is one :class:`ModelError` line, with nothing from torch's loggers before it."""
    path = Path(path)
    _check_regular(path, "file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        is_zip = zipfile.is_zipfile(path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror})") from None
    if not is_zip:
        what = "a pickle" if head[:1] == b"\x80" else "not a zip archive"
        raise ModelError(f"{path}: not a torch.export program ({what}; a .pt2 file is the zip archive "
                         "torch.export.save writes, and bastion never unpickles a model)")
    try:
        with _quiet_torch_loading():
            program = torch.export.load(str(path))
        return program.module()
    except Exception as exc:  # torch raises many types for a corrupt archive
        raise ModelError(f"{path}: not a valid torch.export program ({type(exc).__name__}: "
                         f"{detail(exc)})") from None


@contextmanager
def _quiet_torch_loading():
    """Silence torch's warnings and its export loggers while it reads a file: what went wrong comes
    back as bastion's one line, not as a logged traceback before it."""
    loggers = [logging.getLogger(name) for name in _TORCH_LOAD_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def load_onnx_file(path: Path, runtime: bool) -> LoadedModel:
    """An ``.onnx`` file, converted to torch or (``runtime``) on onnxruntime. The onnx packages (the
    ``onnx`` extra) are imported only here, when a model needs them."""
    try:
        from bastion.models.onnx import load_onnx
    except ImportError as exc:
        raise ModelError(f"{path}: ONNX models need the onnx and onnxruntime packages "
                         f"(pip install 'bastion[onnx]'; {exc})") from None
    return load_onnx(path, runtime=runtime)
