"""Adversarial training: recipes (TOML data), objectives, and the checkpointed training loop."""

from bastion.defenses.training.bundle import save_trained_bundle
from bastion.defenses.training.recipe import METHODS, Recipe, load_recipe, recipe_from_dict
from bastion.defenses.training.trainer import TrainingMonitor, TrainResult, train

__all__ = ["METHODS", "Recipe", "TrainResult", "TrainingMonitor", "load_recipe", "recipe_from_dict",
           "save_trained_bundle", "train"]
