"""Tiny models, data and test-only attacks for the benchmark tests.

The test attacks (names starting with ``test-``) enter the registry only for the
duration of a test, through :func:`use_test_attacks`, so other tests never see them.
"""

from __future__ import annotations

import torch
from torch import nn

from bastion.attacks import ATTACKS, Attack, AttackResult
from bastion.attacks.base import predict
from bastion.attacks.params import Params, integer
from bastion.data import Dataset
from bastion.evaluation.state import Fingerprint, RunState, Unit
from bastion.models.loaded import LoadedModel

DIM = 16


def linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(DIM, 4))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def self_labelled(model: nn.Module, n: int = 24, seed: int = 1) -> Dataset:
    """Random inputs labelled by the model itself, so every clean prediction is correct."""
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    y = predict(model, x)
    return Dataset("synthetic", x, y, 4)


def loaded(module: nn.Module, name: str = "tiny") -> LoadedModel:
    return LoadedModel(module=module, name=name, num_classes=4, source=name)


class Quantized(nn.Module):
    """Rounds its input before the classifier: the input gradient is zero everywhere."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)


class Saturated(nn.Module):
    """Scales the logits by 1,000: cross-entropy's gradient vanishes on every confident sample."""

    def __init__(self, inner: nn.Module, scale: float = 1000.0) -> None:
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x):
        return self.inner(x) * self.scale


class Noisy(nn.Module):
    """Adds fresh noise to the logits on every pass: a randomized model."""

    def __init__(self, inner: nn.Module, scale: float = 5.0) -> None:
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x):
        out = self.inner(x)
        return out + self.scale * torch.randn_like(out)


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


class Reversed(nn.Module):
    """Identity forward, negated gradient backward: gradients point the wrong way."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(_Reverse.apply(x))


class RandomSearch(Attack):
    """Black-box: tries random corners of the Linf ball, keeps the first that fools."""

    name = "test-random-search"
    FAMILY = "black-box"
    norms = ("linf",)
    PARAMS = Params(integer("tries", 50, 1, 1000))
    tries: int

    def attack_batch(self, model, x, y, eps):
        best = x.clone()
        for _ in range(self.tries):
            signs = torch.randint(0, 2, x.shape, generator=self.generator, device=x.device) * 2 - 1
            candidate = self.threat.project(x, x + eps * signs, eps)
            fooled = self.logits(model, candidate).argmax(1) != y
            best[fooled] = candidate[fooled]
        return best


class SmallEpsOnly(Attack):
    """An attack that gives up above eps 0.1: FGSM below it, nothing above."""

    name = "test-small-eps-only"

    def attack_batch(self, model, x, y, eps):
        if eps > 0.1:
            return x
        _, grad, _ = self.loss_and_grad(model, x, y)
        return x + eps * grad.sign()


class Liar(Attack):
    """Claims every sample is fooled while returning the clean inputs."""

    name = "test-liar"

    def run(self, model, x, y):
        correct = predict(model, x) == y.to(x.device)
        return [AttackResult(self.name, eps, x.clone(), correct, torch.zeros_like(correct), 0.0)
                for eps in self.threat.epsilons]


class Spy(Attack):
    """Breaks nothing and records how many samples it was given."""

    name = "test-spy"
    seen: list[int] = []

    def attack_batch(self, model, x, y, eps):
        Spy.seen.append(len(x))
        return x


TEST_ATTACKS = (RandomSearch, SmallEpsOnly, Liar, Spy)


def use_test_attacks(monkeypatch) -> None:
    """Register the test attacks until the end of the current test."""
    for cls in TEST_ATTACKS:
        monkeypatch.setitem(ATTACKS, cls.name, cls)


def write_suite(path, body: str, *, norm: str = "linf", eps="0.3") -> str:
    path.write_text(f'name = "t"\nnorm = "{norm}"\neps = {eps}\n{body}')
    return str(path)


def make_unit(eps: float, attack: str, broken=(), standing: int = 0, family: str = "white-box", **fields) -> Unit:
    """A finished unit for hand-made states (the fields a test does not care about get neutral values)."""
    return Unit(eps=eps, attack=attack, name=attack, family=family, params={}, standing=standing,
                broken=tuple(broken), **{"seconds": 1.0, **fields})


def make_state(units, *, n: int = 6, clean_correct=None, seed: int = 0) -> RunState:
    """A hand-made run state over ``n`` samples."""
    fingerprint = Fingerprint(model_sha256="0", data_sha256="0", n=n, suite_sha256="0", norm="linf",
                              eps=tuple(sorted({u.eps for u in units})), seed=seed)
    clean = tuple(range(n)) if clean_correct is None else tuple(clean_correct)
    return RunState(fingerprint=fingerprint, samples=tuple(range(n)), clean_correct=clean, units=tuple(units),
                    indicators=())
