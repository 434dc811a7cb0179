"""Adversarial training: recipes (TOML data), objectives, and the checkpointed training loop.

Owns: the recipe schema (``recipe``), the training objectives and their inner attacks
(``losses``), weight averaging (``averaging``) and adversarial weight perturbation (``awp``),
the loop with its held-out check and guard (``trainer``), checkpoints (``checkpoint``), the
trained bundle (``bundle``), data-parallel training over the ranks of a torchrun job
(``distributed``) and the launcher ``bastion train --nproc`` starts (``launcher``). May import
threat, data, errors, fsutil, tomlfile, models and attacks (the inner attacks take their pieces
from ``bastion.attacks.toolbox``; the held-out check runs registered attacks); never evaluation,
access, serving or cli.
"""

from bastion.defenses.training.bundle import save_trained_bundle
from bastion.defenses.training.recipe import METHODS, Recipe, load_recipe, recipe_from_dict
from bastion.defenses.training.trainer import TrainingMonitor, TrainResult, train

__all__ = ["METHODS", "Recipe", "TrainResult", "TrainingMonitor", "load_recipe", "recipe_from_dict",
           "save_trained_bundle", "train"]
