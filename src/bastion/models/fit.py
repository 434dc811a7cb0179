"""Does this data fit this model? The one check every command runs before any work starts.

A model either declares what it takes (a bundle's ``input_shape`` and ``num_classes``,
checked against the model itself when the bundle loads: :func:`check_declared_io`) or
it does not (a bare ``.pt2`` program, a ``package.module:factory``, a module handed over
in Python); then one sample is put through it and its own error becomes one line
(:func:`probe_classes`). Either way labels must be classes the model has: a label of 10
on a 10-class model would silently count as misclassified.
"""

from __future__ import annotations

import torch
from torch import nn

from bastion.data import Dataset
from bastion.errors import DataError, ModelError, detail
from bastion.models.loaded import LoadedModel, device_of


def check_fit(model: LoadedModel, data: Dataset) -> int:
    """Refuse ``data`` that ``model`` cannot take; return the model's class count.

    Refused, each as one :class:`DataError` line: samples of another shape than the model
    declares (or, for a model that declares none, samples the model itself rejects), and labels
    outside the model's classes. A model whose output is not one row of class scores per sample
    is a :class:`ModelError`.
    """
    declared = tuple(model.input_shape) if model.input_shape else None
    if declared is not None and tuple(data.input_shape) != declared:
        raise DataError(f"{data.name}: samples have shape {tuple(data.input_shape)}, but {_name(model)} takes "
                        f"{declared}{_shape_hint(data.input_shape, declared)}")
    num_classes = model.num_classes
    if declared is None or num_classes is None:
        num_classes = probe_classes(model.module, data.x[:1], f"{data.name}: samples of shape "
                                    f"{tuple(data.input_shape)} do not fit {_name(model)}")
        if model.num_classes is not None and num_classes != model.num_classes:
            raise ModelError(f"{_name(model)} declares {model.num_classes} classes but outputs {num_classes} scores")
    data.check_labels(num_classes, _name(model))
    return num_classes


def probe_classes(module: nn.Module, sample: torch.Tensor, refusal: str) -> int:
    """Put ``sample`` (a batch of one) through ``module`` in eval mode without gradients and return
    the number of class scores it gives. The module's own error raises :class:`DataError`
    ``refusal: <its first line>``; an output that is not (1, classes) raises :class:`ModelError`."""
    out = _forward_one(module, sample.to(device_of(module)), DataError, refusal)
    return _classes(out, refusal)


def check_declared_io(module: nn.Module, input_shape: tuple[int, ...], num_classes: int,
                      bounds: tuple[float, float], where: str) -> None:
    """Refuse a model that does not take its declared ``input_shape`` or does not give
    ``num_classes`` scores per sample (a bundle's metadata that does not match its weights)."""
    lo, hi = bounds
    sample = torch.full((1, *input_shape), (lo + hi) / 2, device=device_of(module))
    refusal = f"{where}: the model does not take its declared input_shape {list(input_shape)}"
    classes = _classes(_forward_one(module, sample, ModelError, refusal), refusal)
    if classes != num_classes:
        raise ModelError(f"{where}: declares num_classes = {num_classes} but the model gives {classes} class scores")


def _forward_one(module: nn.Module, sample: torch.Tensor, error: type, refusal: str) -> torch.Tensor:
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
    except (NotImplementedError, RuntimeError):
        pass  # torch.export modules refuse mode switches; they run in the mode they were exported in
    try:
        with torch.no_grad():
            return module(sample)
    except Exception as exc:  # the model's own code: its error, whatever its type, becomes one line
        raise error(f"{refusal}: {type(exc).__name__}: {detail(exc)}") from None
    finally:
        for submodule, training in modes:
            if submodule.training != training:
                try:
                    submodule.train(training)
                except (NotImplementedError, RuntimeError):
                    pass


def _classes(out, refusal: str) -> int:
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{refusal}: for one sample the model returns {shape}, not one row of class scores "
                         "(1, classes)")
    return int(out.shape[1])


def _name(model: LoadedModel) -> str:
    return f"model {model.source or model.name}"


def _shape_hint(got: tuple[int, ...], want: tuple[int, ...]) -> str:
    if len(got) == len(want) and got[1:] == want[1:] and got[0] != want[0]:
        return f" ({want[0]} channel(s), not {got[0]})"
    return ""
