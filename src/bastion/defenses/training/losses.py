"""Training objectives: clean, PGD-AT, TRADES, MART, FGSM with random start and Gaussian noise.

One batch's loss is two steps: :func:`training_inputs` is the inner maximisation (the
adversarial or noisy inputs, at the current weights), :func:`objective` the loss to minimise
on them. The trainer keeps the two apart because adversarial weight perturbation (AWP) takes
the gradient of the same objective on the same inputs at perturbed weights.

The inner attacks are short loops over :mod:`bastion.attacks.toolbox`'s pieces rather than
calls into :mod:`bastion.attacks`: during training the attack must keep pushing every sample
(not stop at the first misclassification, as an evaluation attack does) and must cost as little
as possible. Evaluation always uses bastion's attacks.

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

from bastion.attacks.toolbox import random_in_ball, steepest_ascent
from bastion.defenses.training.recipe import Recipe
from bastion.threat import ThreatModel


@dataclass
class BatchLoss:
    loss: torch.Tensor              # scalar to back-propagate
    logits: torch.Tensor            # detached logits on the training inputs (adversarial where attacked)


def batch_loss(recipe: Recipe, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
               bounds: tuple[float, float], generator: torch.Generator) -> BatchLoss:
    """The recipe's objective on one batch at training radius ``eps``; leaves ``model`` in train mode."""
    x_train = training_inputs(recipe, model, x, y, eps, bounds, generator)
    return objective(recipe, model, x, x_train, y, eps)


def training_inputs(recipe: Recipe, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                    bounds: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """The inputs the objective trains on: the inner attack's examples at radius ``eps``, the noisy
    copy for Gaussian training, or ``x`` itself (clean training, or ``eps <= 0``)."""
    method = recipe.method
    if method == "gaussian":
        return x + recipe.noise.sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    if method == "clean" or eps <= 0:
        return x
    threat = ThreatModel(norm=recipe.threat.norm, eps=eps, bounds=bounds)
    if method == "fgsm-rs":
        return fgsm_rs_inner(model, x, y, threat, recipe, generator)
    return pgd_inner(model, x, y, threat, recipe, generator, objective="kl" if method == "trades" else "ce")


def objective(recipe: Recipe, model: nn.Module, x: torch.Tensor, x_train: torch.Tensor, y: torch.Tensor,
              eps: float) -> BatchLoss:
    """The loss to minimise, in train mode, given the clean batch and :func:`training_inputs`' result."""
    model.train()
    attacked = recipe.method in ("trades", "mart") and eps > 0
    if not attacked:  # clean, gaussian, pgd-at, fgsm-rs, or an attack at radius 0
        logits = model(x_train)
        return BatchLoss(F.cross_entropy(logits, y), logits.detach())
    logits_clean, logits_adv = model(torch.cat([x, x_train])).split(len(x))
    if recipe.method == "trades":
        robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
        return BatchLoss(F.cross_entropy(logits_clean, y) + recipe.loss.beta * robust, logits_adv.detach())
    return BatchLoss(mart_loss(logits_clean, logits_adv, y, recipe.loss.beta), logits_adv.detach())


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
    elif settings.random_start:
        start = x + random_in_ball(x, threat.norm, eps, generator)
    else:
        start = x.clone()
    x_adv = threat.project(x, start)
    for _ in range(settings.steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x_adv)
            if objective == "kl":
                loss = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="sum")
            else:
                loss = F.cross_entropy(logits, y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = threat.project(x, x_adv.detach() + alpha * steepest_ascent(grad, threat.norm))
    return x_adv.detach()


def fgsm_rs_inner(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, recipe: Recipe,
                  generator: torch.Generator) -> torch.Tensor:
    """One gradient-sign step of size ``step_size * eps`` from a random start in the ball of
    radius ``noise * eps``."""
    settings = recipe.attack
    eps = threat.single
    model.eval()
    delta = random_in_ball(x, threat.norm, settings.noise * eps, generator) if settings.random_start \
        else torch.zeros_like(x)
    x_start = (x + delta).clamp(*threat.bounds).detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x_start), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_start)
    x_adv = x_start.detach() + settings.step_size * eps * steepest_ascent(grad, threat.norm)
    if settings.clip:
        return threat.project(x, x_adv)
    # N-FGSM: keep the larger step (only the input bounds apply).
    return x_adv.clamp(*threat.bounds)
