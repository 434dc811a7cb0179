"""Defenses: adversarial training, input sanitisers, detectors, certified prediction.

Owns: training recipes and the trainer (:mod:`~bastion.defenses.training`), input
validation (:mod:`~bastion.defenses.validation`) and transforms
(:mod:`~bastion.defenses.transforms`) composed into sanitisers and sanitised models
(:mod:`~bastion.defenses.sanitizer`), the feature-squeezing detector
(:mod:`~bastion.defenses.detection`) and randomized smoothing
(:mod:`~bastion.defenses.smoothing`). May import the bottom layer, ``models`` and
``attacks`` (its attacks come from there; inner loops use :mod:`bastion.attacks.toolbox`),
never ``evaluation``, ``access`` or ``cli``.

:mod:`~bastion.defenses.sanitizer` registers the wrapper that ``models`` applies to a
bundle with a ``[sanitizer]`` section; the composition root (``bastion/__init__.py``)
declares it, so such a bundle loads through :func:`bastion.models.load_model` with no
import by the caller.
"""
