"""Run any ART evasion attack (``art.attacks.evasion``) by class name through bastion's contract.

The class is looked up by name in that one module and nowhere else, so a suite can only
name ART's own attacks. The model is wrapped in ART's ``PyTorchClassifier``; the attack
runs untargeted on the samples bastion hands it, and bastion's base then projects its
output onto the threat model and re-predicts every candidate. ``eps`` and ``norm`` are
filled in from the threat model where the ART class takes them and the caller did not.
Every other keyword goes to the ART class as given: it must be one the class takes, and
a JSON scalar or list (integers at most :data:`MAX_ART_INT` in size, so that a budget
such as ``max_iter`` cannot run away).

Queries are counted where they happen: every sample the wrapped classifier's forward
sees is one model evaluation, whatever the ART attack does (HopSkipJump's boundary
search, a gradient attack's loss gradients, ART's own predictions).

This is the one place numpy appears inside an attack: ART works on numpy arrays. ART is
imported only when an ART attack is built (a heavy optional dependency).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bastion.attacks.base import Attack
from bastion.attacks.params import Params, Problem, json_scalar_problem, text
from bastion.attacks.registry import register
from bastion.errors import AttackError

GRADIENT_MIXINS = ("LossGradientsMixin", "ClassGradientsMixin")
#: The largest integer any ART keyword may hold.
MAX_ART_INT = 1_000_000
#: Keywords bastion fills in itself.
FILLED = ("estimator", "classifier")


def art_attack_class(name: str) -> type:
    """The ART evasion attack class called ``name``, or AttackError."""
    problem = _class_problem(name)
    if problem:
        raise AttackError(f"art: {problem.message}")
    return getattr(importlib.import_module("art.attacks.evasion"), name)


def _class_problem(name: Any) -> Problem | None:
    from art.attacks.attack import EvasionAttack  # ART is heavy: imported only for ART attacks

    module = importlib.import_module("art.attacks.evasion")
    cls = getattr(module, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (inspect.isclass(cls) and issubclass(cls, EvasionAttack)):
        return Problem("attack", f"{name!r} is not an ART evasion attack class name "
                       "(e.g. HopSkipJump, BoundaryAttack, SquareAttack; see art.attacks.evasion)")
    return None


def _keywords_problem(declared: dict[str, Any], extra: dict[str, Any]) -> Problem | None:
    """The ART class must exist and take each extra keyword, whose value must be plain JSON data."""
    problem = _class_problem(declared["attack"])
    if problem:
        return problem
    for key, value in extra.items():
        problem = json_scalar_problem(key, value, max_int=MAX_ART_INT)
        if problem:
            return problem
    cls = art_attack_class(declared["attack"])
    accepted = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        return None
    for key in extra:
        if key not in accepted or key in FILLED:
            takes = ", ".join(k for k in accepted if k not in ("self", *FILLED))
            return Problem(key, f"has no parameter {key!r} for {declared['attack']} (it takes {takes})", unknown=True)
    return None


@register
class ARTAttack(Attack):
    name = "art"
    FAMILY = "black-box"  # the class's default; an instance's family is its ART class's
    PARAMS = Params(text("attack", "HopSkipJump", help="an art.attacks.evasion class name"),
                    extra=_keywords_problem)

    def __init__(self, threat, *, batch_size: int | None = 1000, seed: int = 0, **params):
        super().__init__(threat, batch_size=batch_size, seed=seed, **params)
        self.art_class = art_attack_class(self.attack)
        self.art_kwargs = {k: v for k, v in self.settings.items() if k not in self.PARAMS.by_name}

    @property
    def family(self) -> str:
        """White-box when the ART class needs the model's gradients, else black-box."""
        requirements = {c.__name__ for c in _flatten(getattr(self.art_class, "_estimator_requirements", ()))}
        return "white-box" if requirements & set(GRADIENT_MIXINS) else "black-box"

    def attack_batch(self, model, x, y, eps):
        from art.estimators.classification import PyTorchClassifier  # heavy: only for ART attacks

        num_classes = self.logits(model, x[:1]).shape[1]
        classifier = PyTorchClassifier(
            model=_CountingModule(model, x.dtype, self.count_queries), loss=torch.nn.CrossEntropyLoss(),
            input_shape=tuple(x.shape[1:]), nb_classes=num_classes, clip_values=self.threat.bounds,
            device_type="gpu" if x.device.type == "cuda" else "cpu")
        accepted = inspect.signature(self.art_class.__init__).parameters
        defaults = {"eps": eps, "norm": np.inf if self.threat.norm == "linf" else 2, "verbose": False}
        kwargs = {k: v for k, v in defaults.items() if k in accepted} | self.art_kwargs
        np.random.seed(self.seed)  # ART draws from numpy's global generator
        try:
            art_attack = self.art_class(classifier, **kwargs)
            x_adv = art_attack.generate(x.detach().cpu().numpy(), y=y.cpu().numpy())
        except (ValueError, TypeError) as exc:
            raise AttackError(f"art: {self.attack} failed: {' '.join(str(exc).split())}") from None
        model.eval()  # some ART code paths switch the module to train mode
        return torch.as_tensor(np.asarray(x_adv), dtype=x.dtype, device=x.device)


class _CountingModule(torch.nn.Module):
    """The model as ART sees it: inputs cast to the model's dtype (some ART attacks compute in
    float64), and every sample of every forward pass counted as a query."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, count: Callable[[int], None]) -> None:
        super().__init__()
        self.model, self.dtype, self.count = model, dtype, count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count(len(x))
        return self.model(x.to(self.dtype))


def _flatten(items):
    for item in items:
        if isinstance(item, tuple):
            yield from _flatten(item)
        else:
            yield item
