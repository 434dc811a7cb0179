"""Attacks: one module per attack, all batched torch on the model's device.

Importing this package registers every attack in :data:`~bastion.attacks.registry.ATTACKS`.
"""

from bastion.attacks import fgsm, pgd  # noqa: F401  (registration)
from bastion.attacks.base import Attack, AttackResult, ce_loss, dlr_loss, predict
from bastion.attacks.registry import ATTACKS, get_attack, register

__all__ = ["ATTACKS", "Attack", "AttackResult", "ce_loss", "dlr_loss", "get_attack", "predict", "register"]
