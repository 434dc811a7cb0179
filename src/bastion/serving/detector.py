"""The serving-time detector: feature squeezing, calibrated on the bundle's clean data at load.

What "the bundle's clean data" is, in order:

1. ``calibration.npz`` inside the bundle (arrays ``x`` and ``y``, as ``--data`` takes them):
   signed with the model, so it is read from the verified copy like the weights;
2. the policy rule's ``calibration``: ``mnist`` or ``digits`` (the bundled test splits) or
   an ``.npz`` path;
3. for the zoo models (a bundle whose ``bastion.toml`` name is a zoo name, with or
   without a ``+sanitizer`` suffix): the bundled MNIST test split.

Anything else cannot be calibrated, and the model is refused rather than served with a
detector whose false-positive rate nobody knows. The threshold is set so that at most the
rule's ``detector_fpr`` of the calibration inputs score above it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bastion.data import Dataset, load_data
from bastion.defenses.detection import FeatureSqueezingDetector
from bastion.errors import BastionError, ModelRefused

BUNDLE_CALIBRATION_FILE = "calibration.npz"


def calibration_data(copy: Path, rule, meta) -> Dataset:
    """The clean data to calibrate on (see the module docstring); ModelRefused if there is none."""
    from bastion.models.zoo import ZOO

    bounds = tuple(meta.bounds)
    inside = copy / BUNDLE_CALIBRATION_FILE
    try:
        if inside.is_file():
            data = load_data(inside, bounds=bounds)
        elif rule.calibration is not None:
            data = load_data(rule.calibration, "test", bounds=bounds)
        elif meta.name.split("+", 1)[0] in ZOO:
            data = load_data("mnist", "test")
        else:
            raise ModelRefused("detector", f"detector {rule.detector!r} needs clean data to calibrate on: put "
                                           f"{BUNDLE_CALIBRATION_FILE} (x, y) in the bundle and sign it, or set "
                                           "calibration in the policy rule")
    except ModelRefused:
        raise
    except BastionError as exc:
        raise ModelRefused("detector", f"detector calibration data: {exc}") from None
    if tuple(data.input_shape) != tuple(meta.input_shape):
        raise ModelRefused("detector", f"detector calibration data {data.name} has samples shaped "
                                       f"{list(data.input_shape)}, the model takes {list(meta.input_shape)}")
    return data


class ServingDetector:
    """A calibrated feature-squeezing detector whose forward also returns the model's logits."""

    def __init__(self, module: nn.Module, mode: str, fpr: float, data: Dataset, samples: int, bounds):
        self.mode = mode
        self.detector = FeatureSqueezingDetector(module, bounds=tuple(bounds))
        x = data.take(samples).x
        try:
            self.threshold = self.detector.calibrate(x, fpr)
        except (BastionError, RuntimeError) as exc:
            raise ModelRefused("detector", f"detector calibration failed: {exc}") from None
        self.fpr = fpr
        self.calibrated_on = f"{data.name} ({len(x)} samples)"

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, scores) for a batch: the squeezed views and the plain forward in one go."""
        scores, logits = self.detector.score_with_grad(x)
        return logits[0], scores

    def describe(self) -> dict:
        return {"mode": self.mode, "method": "feature squeezing (bit depth 1, median 2x2)",
                "target_fpr": self.fpr, "threshold": self.threshold, "calibrated_on": self.calibrated_on}
