"""Model architectures bastion can rebuild from a name (bundles refer to these)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def mnist_cnn(num_classes: int = 10) -> nn.Module:
    """Small MNIST CNN (about 455k parameters): two 5x5 conv blocks and a 128-unit dense layer."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def digits_cnn(num_classes: int = 10) -> nn.Module:
    """Tiny CNN for scikit-learn's 8x8 digits."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
        nn.Linear(64, num_classes),
    )


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mnist-cnn": mnist_cnn,
    "digits-cnn": digits_cnn,
}
