"""Adversarial weight perturbation (AWP; Wu et al. 2020, "Adversarial Weight Perturbation Helps
Robust Generalization", NeurIPS).

Adversarial training flattens the loss around each input; AWP also flattens it around the
weights. Per step, after the inner attack has produced the adversarial inputs at the current
weights ``w``, the weights move to ``w + v`` where ``v`` raises the training objective on those
inputs: one ascent step, scaled layer by layer to ``gamma * ||w_l||``::

    v_l = gamma * ||w_l|| * g_l / ||g_l||,    g_l = d objective / d w_l  at w

Only the weight matrices and convolution kernels are perturbed (tensors of two or more
dimensions; biases and normalisation parameters stay, as in the paper's code). The trainer
then takes the objective's gradient at ``w + v``, puts ``w`` back exactly (a saved copy, not a
subtraction, so no rounding drifts in) and lets the optimizer step from ``w`` with that gradient:
``w <- w - lr * grad L(w + v)``. The paper's code restores after the optimizer step instead, which
is the same update for plain SGD; restoring first keeps weight decay and Adam's moments at ``w``.

The perturbation is recomputed from the current weights at every step and kept only for that
step, so AWP carries no state between steps: a checkpoint (always written between steps) holds
unperturbed weights, and the trainer counts the perturbed steps for the record. TRADES-AWP's
settings: ``gamma = 5e-3`` after a warm-up of plain TRADES epochs (``--awp-warmup 10``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


def perturbed_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The tensors AWP moves: every trainable parameter with two or more dimensions."""
    return [p for p in model.parameters() if p.requires_grad and p.dim() > 1]


@contextmanager
def weight_perturbation(model: nn.Module, loss_fn: Callable[[], torch.Tensor], gamma: float,
                        reduce: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None,
                        ) -> Iterator[list[torch.Tensor]]:
    """Inside the block, ``model``'s weights are ``w + v`` (see the module docstring), with ``v``
    from the gradient of ``loss_fn()`` at ``w``; on leaving, exactly ``w`` again.

    In data-parallel training ``loss_fn`` sees one rank's shard of the batch, and ``reduce`` averages
    the gradients over the ranks before ``v`` is taken, so every rank perturbs along the gradient of
    the whole batch: identically, and as one process would.

    Yields the perturbations ``v_l`` (one per tensor of :func:`perturbed_parameters`).
    """
    weights = perturbed_parameters(model)
    grads = torch.autograd.grad(loss_fn(), weights, allow_unused=True)
    # A weight the objective does not reach has a zero gradient.
    grads = [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads)]
    if reduce is not None:
        grads = reduce(grads)
    saved = [w.detach().clone() for w in weights]
    deltas = []
    with torch.no_grad():
        for w, g in zip(weights, grads):
            v = g * (gamma * w.norm() / g.norm().clamp_min(1e-12))
            w.add_(v)
            deltas.append(v)
    try:
        yield deltas
    finally:
        with torch.no_grad():
            for w, original in zip(weights, saved):
                w.copy_(original)
