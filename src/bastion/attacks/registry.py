"""Attacks by name. Suites and the CLI resolve names here and nowhere else."""

from __future__ import annotations

from bastion.attacks.base import Attack
from bastion.errors import AttackError

ATTACKS: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    if not cls.name or cls.name in ATTACKS:
        raise RuntimeError(f"attack name {cls.name!r} is empty or taken")
    ATTACKS[cls.name] = cls
    return cls


def get_attack(name: str) -> type[Attack]:
    try:
        return ATTACKS[name]
    except KeyError:
        raise AttackError(f"unknown attack {name!r}: choose from {', '.join(sorted(ATTACKS))}") from None
