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


def mnist_smallcnn(num_classes: int = 10) -> nn.Module:
    """TRADES' MNIST "SmallCNN" (Zhang et al. 2019, about 312k parameters): four 3x3 convolutions
    (32, 32, 64, 64 channels, max-pooled after each pair) and two 200-unit dense layers with dropout
    0.5. Deeper than ``mnist-cnn`` but a little cheaper per step on a CPU."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 200), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(200, 200), nn.ReLU(),
        nn.Linear(200, num_classes),
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
    "mnist-smallcnn": mnist_smallcnn,
    "digits-cnn": digits_cnn,
}
