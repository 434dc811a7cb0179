"""Attacks: one module per attack, all batched torch on the model's device.

Importing this package registers every attack in :data:`~bastion.attacks.registry.ATTACKS`.
"""

# Imported for their side effect: each module registers its attacks.
from bastion.attacks import apgd, apgd_t, art_adapter, cw, deepfool, fab, fgsm, pgd, square  # noqa: F401
from bastion.attacks.base import Attack, AttackResult, ce_loss, dlr_loss, predict
from bastion.attacks.registry import ATTACKS, get_attack, register

__all__ = ["ATTACKS", "Attack", "AttackResult", "ce_loss", "dlr_loss", "get_attack", "predict", "register"]
