"""Run any ART evasion attack (``art.attacks.evasion``) by class name through bastion's contract.

The class is looked up by name in that one module and nowhere else, so a suite can only
name ART's own attacks. The model is wrapped in ART's ``PyTorchClassifier``; the attack
runs untargeted on the samples bastion hands it, and bastion's base then projects its
output onto the threat model and re-checks every prediction. ``eps`` and ``norm`` are
filled in from the threat model where the ART class takes them and the caller did not.

This is the one place numpy appears inside an attack: ART works on numpy arrays.
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import torch

from bastion.attacks.base import Attack
from bastion.attacks.registry import register
from bastion.errors import AttackError

GRADIENT_MIXINS = ("LossGradientsMixin", "ClassGradientsMixin")


def art_attack_class(name: str) -> type:
    """The ART evasion attack class called ``name``, or AttackError."""
    from art.attacks.attack import EvasionAttack

    module = importlib.import_module("art.attacks.evasion")
    cls = getattr(module, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (inspect.isclass(cls) and issubclass(cls, EvasionAttack)):
        raise AttackError(f"art: {name!r} is not an ART evasion attack class name "
                          "(e.g. HopSkipJump, BoundaryAttack, SquareAttack; see art.attacks.evasion)")
    return cls


@register
class ARTAttack(Attack):
    name = "art"
    family = "black-box"

    def __init__(self, threat, *, attack: str = "HopSkipJump", batch_size: int = 1000, seed: int = 0,
                 **art_kwargs):
        super().__init__(threat, batch_size=batch_size, seed=seed)
        self.art_class = art_attack_class(attack)
        accepted = inspect.signature(self.art_class.__init__).parameters
        unknown = sorted(set(art_kwargs) - set(accepted) - {"self"})
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            takes = ", ".join(k for k in accepted if k not in ("self", "estimator", "classifier"))
            raise AttackError(f"art: {attack} has no parameter {', '.join(unknown)} (it takes {takes})")
        self.attack_name, self.art_kwargs = attack, dict(art_kwargs)
        requirements = {c.__name__ for c in _flatten(getattr(self.art_class, "_estimator_requirements", ()))}
        self.family = "white-box" if requirements & set(GRADIENT_MIXINS) else "black-box"

    def params(self):
        return {**super().params(), "attack": self.attack_name, **self.art_kwargs}

    def attack_batch(self, model, x, y, eps):
        from art.estimators.classification import PyTorchClassifier

        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
        classifier = PyTorchClassifier(
            model=_FloatInputs(model, x.dtype), loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
            nb_classes=num_classes, clip_values=self.threat.bounds,
            device_type="gpu" if x.device.type == "cuda" else "cpu")
        accepted = inspect.signature(self.art_class.__init__).parameters
        defaults = {"eps": eps, "norm": np.inf if self.threat.norm == "linf" else 2, "verbose": False}
        kwargs = {k: v for k, v in defaults.items() if k in accepted} | self.art_kwargs
        np.random.seed(self.seed)  # ART draws from numpy's global generator
        try:
            art_attack = self.art_class(classifier, **kwargs)
            x_adv = art_attack.generate(x.detach().cpu().numpy(), y=y.cpu().numpy())
        except (ValueError, TypeError) as exc:
            raise AttackError(f"art: {self.attack_name} failed: {' '.join(str(exc).split())}") from None
        model.eval()  # some ART code paths switch the module to train mode
        self._queries += len(x)
        return torch.as_tensor(np.asarray(x_adv), dtype=x.dtype, device=x.device)


class _FloatInputs(torch.nn.Module):
    """Casts inputs to the model's dtype: some ART attacks compute in float64."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype))


def _flatten(items):
    for item in items:
        if isinstance(item, tuple):
            yield from _flatten(item)
        else:
            yield item
