"""The training objectives: inner attacks stay in their budget and raise the loss; loss formulas hold."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bastion.defenses.training.losses import batch_loss, fgsm_rs_inner, mart_loss, pgd_inner
from bastion.models.architectures import digits_cnn
from bastion.threat import ThreatModel
from training_helpers import digits_recipe, digits_train


def _setup():
    torch.manual_seed(0)
    data = digits_train().take(64)
    return digits_cnn(), data.x, data.y, ThreatModel(eps=0.2)


def test_pgd_inner_stays_in_the_ball_and_raises_the_loss():
    model, x, y, threat = _setup()
    recipe = digits_recipe("pgd-at", attack={"steps": 5, "step_size": 0.25})
    x_adv = pgd_inner(model, x, y, threat, recipe, torch.Generator().manual_seed(0), objective="ce")
    assert (x_adv - x).abs().max() <= 0.2 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
        clean_probs = F.softmax(model(x), 1)
    x_kl = pgd_inner(model, x, y, threat, recipe, torch.Generator().manual_seed(0), objective="kl")
    x_noise = (x + torch.empty_like(x).uniform_(-0.2, 0.2)).clamp(0, 1)
    with torch.no_grad():
        kl = F.kl_div(F.log_softmax(model(x_kl), 1), clean_probs, reduction="batchmean")
        kl_noise = F.kl_div(F.log_softmax(model(x_noise), 1), clean_probs, reduction="batchmean")
    assert kl > 2 * kl_noise and (x_kl - x).abs().max() <= 0.2 + 1e-6


def test_fgsm_rs_clip_and_nfgsm_budgets():
    model, x, y, threat = _setup()
    clipped = fgsm_rs_inner(model, x, y, threat, digits_recipe("fgsm-rs", attack={"step_size": 1.25}),
                            torch.Generator().manual_seed(0))
    assert (clipped - x).abs().max() <= 0.2 + 1e-6
    wide = fgsm_rs_inner(model, x, y, threat, digits_recipe("fgsm-rs", attack={"noise": 2.0, "clip": False,
                                                                                "step_size": 1.0}),
                         torch.Generator().manual_seed(0))
    assert 0.2 < (wide - x).abs().max() <= 0.6 + 1e-6  # N-FGSM leaves the eps ball on purpose
    assert wide.min() >= 0 and wide.max() <= 1


def test_loss_formulas():
    logits = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    # MART with identical clean and adversarial logits: the KL term vanishes.
    probs = F.softmax(logits, 1)
    top2 = probs.topk(2, 1).indices
    runner_up = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    expected = F.cross_entropy(logits, y) + F.nll_loss(torch.log(1.0001 - probs + 1e-12), runner_up)
    assert torch.allclose(mart_loss(logits, logits, y, beta=6.0), expected, atol=1e-5)
    assert mart_loss(logits, logits + torch.randn(8, 10), y, beta=6.0) > mart_loss(logits, logits + 0, y, beta=0.0)

    # At eps 0 every objective is plain cross-entropy on the clean batch.
    model, x, y, _ = _setup()
    for method in ("pgd-at", "trades", "mart", "fgsm-rs"):
        out = batch_loss(digits_recipe(method), model, x, y, 0.0, (0.0, 1.0), torch.Generator())
        assert torch.allclose(out.loss, F.cross_entropy(model(x), y), atol=1e-6)
        assert model.training
