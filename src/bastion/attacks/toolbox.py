"""The small pieces every gradient or score attack is built from, each written once.

Attacks, adversarial training, the detector's adaptive attack and the attack-failure
indicators all take these from here rather than writing their own:

- :func:`per_sample` broadcasts one number per sample over a batch of inputs;
- :func:`margin` is the untargeted (or targeted) logit margin, negative exactly when
  the sample is misclassified (towards the target);
- :func:`steepest_ascent` is the unit-norm direction of steepest ascent of a gradient
  (its sign for Linf, the normalised gradient for L2);
- :func:`random_in_ball` draws a point uniformly from the eps ball (by volume);
- :func:`ascent_step` is one projected steepest-ascent step (PGD's update);
- :func:`ranked_targets` lists the target classes of a targeted attack, most likely first.
"""

from __future__ import annotations

import torch

from bastion.threat import ThreatModel


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` (one per sample, shape (n,)) shaped to broadcast against ``like`` (n, ...)."""
    return values.view(-1, *[1] * (like.dim() - 1))


def margin(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """``z_y - max_{k != y} z_k`` (or ``z_y - z_target``): negative exactly when the model is fooled.

    Unlike cross-entropy it does not saturate on confident predictions, so a zero
    gradient of it means the model itself gives none.
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    if target is not None:
        return true - logits.gather(1, target[:, None]).squeeze(1)
    return true - logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def steepest_ascent(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The direction of steepest ascent of unit ``norm``: ``sign(grad)`` for Linf, ``grad / ||grad||_2`` for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / per_sample(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)


def random_in_ball(x: torch.Tensor, norm: str, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A perturbation drawn uniformly (by volume) from the ``norm`` ball of radius ``eps`` around 0.

    Linf: each coordinate uniform in [-eps, eps]. L2: a uniformly random direction at radius
    ``eps * U^(1/d)``, which is uniform in the ball's volume (in high dimension, close to its surface).
    """
    if norm == "linf":
        return torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = steepest_ascent(direction, "l2")
    dims = x[0].numel() if len(x) else 1
    radius = eps * torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / dims)
    return direction * per_sample(radius, x)


def ascent_step(threat: ThreatModel, x: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor,
                step: float | torch.Tensor, eps: float) -> torch.Tensor:
    """``x_adv`` moved by ``step`` (a number, or one per sample) along the steepest ascent of ``grad``,
    then projected onto the eps ball around ``x`` and the input bounds."""
    if isinstance(step, torch.Tensor):
        step = per_sample(step, x_adv)
    return threat.project(x, x_adv + step * steepest_ascent(grad, threat.norm), eps)


def ranked_targets(logits: torch.Tensor, count: int) -> torch.Tensor:
    """(n, k): the classes ranked 2nd, 3rd, ... by ``logits``, most likely first, at most ``count``
    of them (k = min(count, classes - 1)). For a correctly classified input these are the target
    classes nearest to succeed, in the order targeted attacks try them."""
    return logits.argsort(dim=1, descending=True)[:, 1:1 + min(count, logits.shape[1] - 1)]
