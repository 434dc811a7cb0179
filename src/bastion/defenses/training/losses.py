"""Training objectives: clean, PGD-AT, TRADES, MART and FGSM with random start.

Each objective returns the loss to minimise for one batch. The inner
maximisation is a short loop written here rather than a call into
:mod:`bastion.attacks`: during training the attack must keep pushing every
sample (not stop at the first misclassification, as an evaluation attack
does) and must cost as little as possible. Evaluation always uses bastion's
attacks.

- PGD-AT (Madry et al. 2018): cross-entropy on PGD examples.
- TRADES (Zhang et al. 2019): CE(clean) + beta * KL(p(clean) || p(adv)), adv maximising the KL.
- MART (Wang et al. 2020): boosted CE on the adversarial example + beta * KL weighted by
  (1 - p_true(clean)), so misclassified clean samples weigh more.
- Gaussian augmentation (Cohen et al. 2019): cross-entropy on ``x + N(0, sigma^2 I)``, the
  base model randomized smoothing certifies (no attack, so the threat's eps plays no part).
- FGSM-RS (Wong et al. 2020): one signed step of size ``step_size * eps`` from a uniform
  random start; with ``noise = 2, clip = false`` it is N-FGSM (de Jorge et al. 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.base import lp_normalize
from bastion.defenses.training.recipe import Recipe
from bastion.threat import ThreatModel


@dataclass
class BatchLoss:
    loss: torch.Tensor              # scalar to back-propagate
    logits: torch.Tensor            # detached logits on the training inputs (adversarial where attacked)


def batch_loss(recipe: Recipe, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
               bounds: tuple[float, float], generator: torch.Generator) -> BatchLoss:
    """The recipe's objective on one batch at training radius ``eps``; leaves ``model`` in train mode."""
    method = recipe.method
    if method == "gaussian":
        model.train()
        logits = model(x + recipe.noise.sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype))
        return BatchLoss(F.cross_entropy(logits, y), logits.detach())
    threat = ThreatModel(norm=recipe.threat.norm, eps=max(eps, 0.0), bounds=bounds)
    if method == "clean" or eps <= 0:
        model.train()
        logits = model(x)
        return BatchLoss(F.cross_entropy(logits, y), logits.detach())
    if method in ("pgd-at", "fgsm-rs"):  # both: cross-entropy on the inner attack's examples
        if method == "pgd-at":
            x_adv = pgd_inner(model, x, y, threat, recipe, generator, objective="ce")
        else:
            x_adv = fgsm_rs_inner(model, x, y, threat, recipe, generator)
        model.train()
        logits = model(x_adv)
        return BatchLoss(F.cross_entropy(logits, y), logits.detach())
    if method == "trades":
        x_adv = pgd_inner(model, x, y, threat, recipe, generator, objective="kl")
        model.train()
        logits_clean, logits_adv = model(torch.cat([x, x_adv])).split(len(x))
        robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
        return BatchLoss(F.cross_entropy(logits_clean, y) + recipe.loss.beta * robust, logits_adv.detach())
    if method == "mart":
        x_adv = pgd_inner(model, x, y, threat, recipe, generator, objective="ce")
        model.train()
        logits_clean, logits_adv = model(torch.cat([x, x_adv])).split(len(x))
        return BatchLoss(mart_loss(logits_clean, logits_adv, y, recipe.loss.beta), logits_adv.detach())
    raise ValueError(f"unknown training method {method!r}")  # recipes are validated, so this is a bug


def mart_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    probs_adv = F.softmax(logits_adv, dim=1)
    # Most likely wrong class on the adversarial input: the margin term pushes its probability down.
    top2 = probs_adv.topk(2, dim=1).indices
    runner_up = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    boosted_ce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - probs_adv + 1e-12), runner_up)
    probs_clean = F.softmax(logits_clean, dim=1)
    kl = (probs_clean * (torch.log(probs_clean + 1e-12) - torch.log(probs_adv + 1e-12))).sum(dim=1)
    true_prob = probs_clean.gather(1, y[:, None]).squeeze(1)
    return boosted_ce + beta * (kl * (1.0000001 - true_prob)).mean()


def pgd_inner(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, recipe: Recipe,
              generator: torch.Generator, *, objective: str) -> torch.Tensor:
    """``recipe.attack.steps`` steps of projected ascent on CE (``objective='ce'``) or on the KL
    divergence from the clean prediction (``'kl'``, TRADES), in eval mode."""
    settings = recipe.attack
    eps = threat.single
    alpha = settings.step_size * eps
    model.eval()
    if objective == "kl":
        with torch.no_grad():
            target = F.softmax(model(x), dim=1)
        # TRADES starts next to x: the KL gradient is exactly zero at x itself.
        start = x + 0.001 * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x_adv = threat.project(x, start)
    else:
        x_adv = x + random_delta(x, threat, eps, generator) if settings.random_start else x.clone()
        x_adv = threat.project(x, x_adv)
    for _ in range(settings.steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x_adv)
            if objective == "kl":
                loss = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="sum")
            else:
                loss = F.cross_entropy(logits, y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = threat.project(x, x_adv.detach() + alpha * lp_normalize(grad, threat.norm))
    return x_adv.detach()


def fgsm_rs_inner(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, recipe: Recipe,
                  generator: torch.Generator) -> torch.Tensor:
    """One gradient-sign step of size ``step_size * eps`` from a random start in ``noise * eps``."""
    settings = recipe.attack
    eps = threat.single
    model.eval()
    delta = random_delta(x, threat, settings.noise * eps, generator) if settings.random_start else torch.zeros_like(x)
    x_start = (x + delta).clamp(*threat.bounds).detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x_start), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_start)
    x_adv = x_start.detach() + settings.step_size * eps * lp_normalize(grad, threat.norm)
    if settings.clip:
        return threat.project(x, x_adv)
    # N-FGSM: keep the larger step (only the input bounds apply).
    return x_adv.clamp(*threat.bounds)


def random_delta(x: torch.Tensor, threat: ThreatModel, radius: float, generator: torch.Generator) -> torch.Tensor:
    """A random perturbation: uniform in the Linf cube, or a random direction at a uniform L2 radius."""
    if threat.norm == "linf":
        return torch.empty_like(x).uniform_(-radius, radius, generator=generator)
    direction = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    direction = lp_normalize(direction, "l2")
    scale = radius * torch.rand(len(x), generator=generator, dtype=x.dtype)
    return direction * scale.view(-1, *[1] * (x.dim() - 1))
