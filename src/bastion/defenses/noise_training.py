"""Gaussian-augmentation training (Cohen et al. 2019): the base model randomized smoothing needs.

A smoothed classifier is only as good as its base model's accuracy under noise, so the
base model is trained on ``x + N(0, sigma^2 I)`` with the sigma it will be certified at.
The recipe uses the training recipes' layout with ``recipe.method = "gaussian"``::

    [recipe]     name, description, method = "gaussian", seed
    [model]      architecture
    [data]       dataset
    [noise]      sigma
    [optimizer]  name (adam | sgd), lr, epochs, batch_size
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion.data import Dataset
from bastion.errors import ConfigError

SCHEMA: dict[str, dict[str, type]] = {
    "recipe": {"name": str, "description": str, "method": str, "seed": int},
    "model": {"architecture": str},
    "data": {"dataset": str},
    "noise": {"sigma": float},
    "optimizer": {"name": str, "lr": float, "epochs": int, "batch_size": int},
}


@dataclass(frozen=True)
class NoiseRecipe:
    name: str = "gaussian"
    description: str = ""
    seed: int = 0
    architecture: str = "mnist-cnn"
    dataset: str = "mnist"
    sigma: float = 0.25
    optimizer: str = "adam"
    lr: float = 0.001
    epochs: int = 15
    batch_size: int = 128
    source: str = "<dict>"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "source"}


def load_noise_recipe(name_or_path: str | Path) -> NoiseRecipe:
    from bastion.catalog import resolve

    path = resolve("defenses", name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: malformed TOML ({exc})") from None
    return noise_recipe_from_dict(raw, str(path))


def noise_recipe_from_dict(raw: dict[str, Any], source: str = "<dict>") -> NoiseRecipe:
    values: dict[str, Any] = {}
    for section, table in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"{source}: unknown section '{section}' (known: {', '.join(SCHEMA)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: '{section}' must be a table ([{section}])")
        for key, value in table.items():
            expected = SCHEMA[section].get(key)
            if expected is None:
                raise ConfigError(f"{source}: unknown key '{section}.{key}' (known: {', '.join(SCHEMA[section])})")
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or isinstance(value, bool):
                raise ConfigError(f"{source}: key '{section}.{key}' must be {expected.__name__}, got {value!r}")
            # Flatten into NoiseRecipe's fields; optimizer.name is the only key renamed.
            values["optimizer" if (section, key) == ("optimizer", "name") else key] = value
    if values.pop("method", None) != "gaussian":
        raise ConfigError(f"{source}: key 'recipe.method' must be \"gaussian\" for a noise-augmentation recipe")
    recipe = NoiseRecipe(**values, source=source)
    checks = [(recipe.sigma > 0, "noise.sigma", "must be > 0", recipe.sigma),
              (recipe.lr > 0, "optimizer.lr", "must be > 0", recipe.lr),
              (recipe.epochs >= 1, "optimizer.epochs", "must be >= 1", recipe.epochs),
              (recipe.batch_size >= 1, "optimizer.batch_size", "must be >= 1", recipe.batch_size),
              (recipe.optimizer in ("adam", "sgd"), "optimizer.name", "must be adam or sgd", recipe.optimizer)]
    for ok, key, message, value in checks:
        if not ok:
            raise ConfigError(f"{source}: key '{key}' {message}, got {value!r}")
    from bastion.models.architectures import ARCHITECTURES

    if recipe.architecture not in ARCHITECTURES:
        raise ConfigError(f"{source}: key 'model.architecture' must be one of {', '.join(ARCHITECTURES)}")
    return recipe


def train_with_noise(recipe: NoiseRecipe, data: Dataset, *, epochs: int | None = None,
                     progress=None) -> tuple[nn.Module, dict[str, Any]]:
    """Train a fresh model on ``data`` with Gaussian noise; returns it (eval mode) and its metrics."""
    from bastion.models.architectures import ARCHITECTURES

    epochs = epochs or recipe.epochs
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    model = ARCHITECTURES[recipe.architecture](num_classes=data.num_classes)
    steps_per_epoch = -(-len(data) // recipe.batch_size)
    if recipe.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, epochs=epochs,
                                                   steps_per_epoch=steps_per_epoch)
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        total_loss = 0.0
        for batch in order.split(recipe.batch_size):
            x, y = data.x[batch], data.y[batch]
            noisy = x + recipe.sigma * torch.randn(x.shape, generator=generator)
            loss = F.cross_entropy(model(noisy), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
        if progress is not None:
            progress(epoch + 1, epochs, total_loss / len(data))
    model.eval()
    return model, {"epochs": epochs, "seconds": round(time.perf_counter() - start, 1)}


def noisy_accuracy(model: nn.Module, data: Dataset, sigma: float, *, seed: int = 0) -> float:
    """Accuracy of the base model on one noisy copy of each sample (a quick health check)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        noisy = data.x + sigma * torch.randn(data.x.shape, generator=generator)
        return (model(noisy).argmax(1) == data.y).float().mean().item()
