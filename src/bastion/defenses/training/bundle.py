"""Write a trained model as a bastion bundle that records its recipe and training metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bastion.data import Dataset
from bastion.defenses.training.trainer import TrainResult
from bastion.models.bundle import BundleMeta, save_bundle


def save_trained_bundle(result: TrainResult, out: str | Path, data: Dataset, *, name: str | None = None,
                        architecture: str | None = None, version: str = "1",
                        extra: dict[str, Any] | None = None) -> Path:
    """Save ``result.model`` to the bundle directory ``out``; ``training`` holds recipe, metrics and ``extra``."""
    recipe = result.recipe
    training: dict[str, Any] = {
        "recipe": recipe.name, "method": recipe.method, "seed": recipe.recipe.seed, "data": data.name,
        # The trainer keeps data.holdout samples out for its per-epoch check (trainer.split_holdout).
        "train_samples": len(data) - recipe.data.holdout, "holdout_samples": recipe.data.holdout,
        "metrics": result.metrics, "settings": recipe.to_dict(),
    }
    if extra:
        training.update(extra)
    meta = BundleMeta(name=name or f"{recipe.model.architecture}-{recipe.name}",
                      architecture=architecture or recipe.model.architecture,
                      input_shape=list(data.input_shape), num_classes=data.num_classes, version=version,
                      bounds=list(data.bounds), training=training)
    return save_bundle(result.model, out, meta)
