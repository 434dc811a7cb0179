"""Attacks: one module per attack, all batched torch on the model's device.

Owns: the attack contract (:mod:`~bastion.attacks.base`: batching, projection, eps sweeps,
query counting, the attack's own re-prediction), the declared parameters and their one
check (:mod:`~bastion.attacks.params`), the building blocks every gradient or score loop
uses (:mod:`~bastion.attacks.toolbox`: margin, steepest ascent, random-in-ball, the
projected step, per-sample broadcasting), the registry suites and the CLI resolve names
in, and one module per attack reading like its paper (plus the ART adapter). May import
the bottom layer and ``models``; never ``evaluation``, ``defenses``, ``access`` or ``cli``.
A new attack is a module here: set ``name`` and ``PARAMS``, implement ``attack_batch``,
``@register`` it, import it below, and add it to the README's attack table.

Importing this package registers every attack in :data:`~bastion.attacks.registry.ATTACKS`.
"""

# Imported for their side effect: each module registers its attacks.
from bastion.attacks import (  # noqa: F401
    apgd, apgd_mm, apgd_t, art_adapter, cw, deepfool, fab, fgsm, pgd, square, square_check)
from bastion.attacks.base import Attack, AttackResult, ce_loss, dlr_loss, predict
from bastion.attacks.registry import ATTACKS, get_attack, register

__all__ = ["ATTACKS", "Attack", "AttackResult", "ce_loss", "dlr_loss", "get_attack", "predict", "register"]
