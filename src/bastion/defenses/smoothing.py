"""Randomized smoothing (Cohen et al. 2019): certified L2 robustness by Gaussian noise.

The smoothed classifier g(x) predicts the class the base model f most often returns
on x + N(0, sigma^2 I). CERTIFY picks a candidate class from ``n0`` noisy samples,
counts it in ``n`` fresh samples, and takes a one-sided Clopper-Pearson lower bound
pA on its probability at confidence 1 - alpha. If pA > 1/2, g(x) is that class for
every x' with ||x' - x||_2 < sigma * Phi^-1(pA); otherwise g abstains. Noise is not
clipped to the input bounds: the guarantee is about the base model exactly as sampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from scipy.stats import beta, binomtest, norm
from torch import nn

from bastion.attacks.params import MAX_BATCH_SIZE
from bastion.errors import UsageError
from bastion.fsutil import atomic_path

ABSTAIN = -1
#: The most noise samples a certificate may draw (``n0`` and ``samples`` each): a bound on the work.
MAX_NOISE_SAMPLES = 1_000_000
#: The largest noise, in units of the input range's span: beyond it every noisy copy is noise alone.
MAX_SIGMA_SPANS = 10.0


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided lower confidence bound on a binomial proportion at level 1 - alpha."""
    if successes <= 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


def certified_radius(p_lower: float, sigma: float) -> float:
    """sigma * Phi^-1(p_lower): the L2 radius certified by a lower bound p_lower > 1/2 (else 0)."""
    return float(sigma * norm.ppf(p_lower)) if p_lower > 0.5 else 0.0


def sample_counts(model: nn.Module, x: torch.Tensor, sigma: float, samples: int, *, num_classes: int,
                  batch_size: int = 1000, generator: torch.Generator | None = None) -> torch.Tensor:
    """Class counts of ``model`` on ``samples`` noisy copies of one input ``x`` (C, H, W) -> (num_classes,)."""
    counts = torch.zeros(num_classes, dtype=torch.long, device=x.device)
    remaining = samples
    with torch.no_grad():
        while remaining > 0:
            size = min(batch_size, remaining)
            batch = x.unsqueeze(0).expand(size, *x.shape)
            noise = torch.randn(batch.shape, generator=generator, device=x.device, dtype=x.dtype)
            predictions = model(batch + sigma * noise).argmax(dim=1)
            counts += torch.bincount(predictions, minlength=num_classes)[:num_classes]
            remaining -= size
    return counts


@dataclass
class Certification:
    prediction: torch.Tensor  # (N,) class, or ABSTAIN (-1)
    radius: torch.Tensor      # (N,) certified L2 radius; 0 where abstaining
    p_lower: torch.Tensor     # (N,) lower confidence bound on the top class's probability
    sigma: float
    n0: int
    samples: int
    alpha: float

    def correct(self, y: torch.Tensor) -> torch.Tensor:
        return self.prediction.cpu() == y.cpu()

    def certified_accuracy(self, y: torch.Tensor, radii: list[float]) -> list[float]:
        """Fraction of samples predicted correctly with a certified radius >= r, for each r."""
        correct = self.correct(y)
        return [(correct & (self.radius >= r)).float().mean().item() for r in radii]

    def summary(self, y: torch.Tensor) -> dict[str, Any]:
        """The certificates against the labels ``y``: accuracies, abstentions, the certified-accuracy
        table over :func:`radius_grid`, the largest certifiable radius, and every sample's certificate."""
        y = y.cpu()
        correct = self.correct(y)
        abstained = self.prediction == ABSTAIN
        radii = radius_grid(self.sigma, self.samples, self.alpha)
        return {
            "n": len(y), "sigma": self.sigma, "n0": self.n0, "samples": self.samples, "alpha": self.alpha,
            "smoothed_accuracy": correct.float().mean().item(), "abstained": int(abstained.sum()),
            "wrong": int((~correct & ~abstained).sum()),
            "median_radius_correct": float(self.radius[correct].median()) if correct.any() else 0.0,
            "certified_accuracy": [{"radius": r, "certified_accuracy": a}
                                   for r, a in zip(radii, self.certified_accuracy(y, radii))],
            "max_certifiable_radius": max_certifiable_radius(self.sigma, self.samples, self.alpha),
            "per_sample": [{"label": int(label), "prediction": int(p), "radius": round(float(r), 6),
                            "p_lower": round(float(q), 6)}
                           for label, p, r, q in zip(y, self.prediction, self.radius, self.p_lower)],
        }


def certify(model: nn.Module, x: torch.Tensor, *, sigma: float, n0: int = 100, samples: int = 1000,
            alpha: float = 0.001, num_classes: int | None = None, batch_size: int = 1000,
            seed: int = 0, bounds: tuple[float, float] = (0.0, 1.0), progress=None) -> Certification:
    """Cohen et al.'s CERTIFY for every input in ``x`` (N, C, H, W); ``bounds`` is the input range
    (it bounds ``sigma``: see :func:`check_settings`)."""
    check_settings(sigma=sigma, n0=n0, samples=samples, alpha=alpha, batch_size=batch_size, bounds=bounds)
    x, num_classes, generator = _prepare(model, x, num_classes, seed)
    predictions, radii, lowers = [], [], []
    for i in range(len(x)):
        selection = sample_counts(model, x[i], sigma, n0, num_classes=num_classes, batch_size=batch_size,
                                  generator=generator)
        candidate = int(selection.argmax())
        counts = sample_counts(model, x[i], sigma, samples, num_classes=num_classes, batch_size=batch_size,
                               generator=generator)
        p_lower = clopper_pearson_lower(int(counts[candidate]), samples, alpha)
        predictions.append(candidate if p_lower > 0.5 else ABSTAIN)
        radii.append(certified_radius(p_lower, sigma))
        lowers.append(p_lower)
        if progress is not None:
            progress(1)
    return Certification(prediction=torch.tensor(predictions, dtype=torch.long),
                         radius=torch.tensor(radii, dtype=torch.float64),
                         p_lower=torch.tensor(lowers, dtype=torch.float64),
                         sigma=sigma, n0=n0, samples=samples, alpha=alpha)


def predict_smoothed(model: nn.Module, x: torch.Tensor, *, sigma: float, samples: int = 100,
                     alpha: float = 0.001, num_classes: int | None = None, batch_size: int = 1000,
                     seed: int = 0) -> torch.Tensor:
    """Cohen et al.'s PREDICT: the top class, or ABSTAIN when a two-sided binomial test cannot
    tell it from the runner-up at level alpha (so a wrong answer has probability <= alpha)."""
    check_settings(sigma=sigma, n0=1, samples=samples, alpha=alpha, batch_size=batch_size)
    x, num_classes, generator = _prepare(model, x, num_classes, seed)
    out = []
    for i in range(len(x)):
        counts = sample_counts(model, x[i], sigma, samples, num_classes=num_classes, batch_size=batch_size,
                               generator=generator)
        top2 = counts.topk(2)
        n_a, n_b = int(top2.values[0]), int(top2.values[1])
        p_value = binomtest(n_a, n_a + n_b, 0.5).pvalue
        out.append(int(top2.indices[0]) if p_value <= alpha else ABSTAIN)
    return torch.tensor(out, dtype=torch.long)


def check_settings(*, sigma: float, n0: int, samples: int, alpha: float, batch_size: int,
                   bounds: tuple[float, float] = (0.0, 1.0)) -> None:
    """Refuse settings no certificate can use: a noise ``sigma`` that is not in
    (0, :data:`MAX_SIGMA_SPANS` x the span of ``bounds``], noise sample counts outside 1 to
    :data:`MAX_NOISE_SAMPLES`, ``alpha`` outside (0, 0.5), a batch size outside 1 to 100,000."""
    top = MAX_SIGMA_SPANS * (bounds[1] - bounds[0])
    if not (math.isfinite(sigma) and 0 < sigma <= top):
        raise UsageError(f"--sigma must be > 0 and at most {top:g} ({MAX_SIGMA_SPANS:g} x the span of the input "
                         f"range [{bounds[0]:g}, {bounds[1]:g}]), got {sigma}")
    if not (1 <= n0 <= MAX_NOISE_SAMPLES and 1 <= samples <= MAX_NOISE_SAMPLES):
        raise UsageError(f"--n0 and --samples must be from 1 to {MAX_NOISE_SAMPLES:,}, got {n0:,} and {samples:,}")
    if not 0 < alpha < 0.5:
        raise UsageError(f"--alpha must be in (0, 0.5), got {alpha}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise UsageError(f"--batch-size must be from 1 to {MAX_BATCH_SIZE:,}, got {batch_size:,}")


def _prepare(model: nn.Module, x: torch.Tensor, num_classes: int | None, seed: int):
    """Inputs on the model's device, the class count (asked of the model if not given), a seeded generator."""
    device = _device(model, x)
    x = x.to(device)
    if num_classes is None:
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
    return x, num_classes, torch.Generator(device=device).manual_seed(seed)


def _device(model: nn.Module, x: torch.Tensor) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return x.device


def max_certifiable_radius(sigma: float, samples: int, alpha: float) -> float:
    """The largest radius CERTIFY can return: every one of ``samples`` draws in the top class."""
    return certified_radius(clopper_pearson_lower(samples, samples, alpha), sigma)


def radius_grid(sigma: float, samples: int, alpha: float, points: int = 8) -> list[float]:
    """Radii at a round step from 0 up to the largest certifiable one, for the certified-accuracy table."""
    top = max_certifiable_radius(sigma, samples, alpha) or sigma
    raw_step = top / points
    scale = 10 ** math.floor(math.log10(raw_step))
    step = next(m * scale for m in (1, 2, 2.5, 5, 10) if m * scale >= raw_step)
    return [round(i * step, 6) for i in range(int(top / step + 1e-9) + 1)]


def write_certified_plot(path, radii: torch.Tensor, correct: torch.Tensor, sigma: float, title: str) -> None:
    """Certified accuracy as a step function of the radius, as a PNG written atomically."""
    import matplotlib  # heavy optional dependency: only when the plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = 1.05 * max(float(radii.max()) if len(radii) else 0.0, sigma)
    grid = torch.linspace(0, top, 200)
    accuracy = [(correct & (radii >= r)).float().mean().item() for r in grid.tolist()]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.step(grid.numpy(), accuracy, where="post")
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
