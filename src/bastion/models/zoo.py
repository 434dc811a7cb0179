"""The bundled model zoo: each entry is a bundle directory shipped inside the package.

Weights are produced by reproducible scripts (``scripts/train_zoo.py`` and the
defense recipes); see the README for how each was trained and what it scores.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

ZOO_DIR = Path(str(resources.files("bastion.models").joinpath("zoo")))

#: zoo name -> one-line description
ZOO: dict[str, str] = {
    "mnist-cnn": "MNIST CNN, standard training on the bundled 4,000-image train split",
    "mnist-cnn-robust": "MNIST CNN, adversarially trained (Linf eps 0.3) on the bundled train split",
    "mnist-cnn-gaussian": "MNIST CNN, trained on Gaussian noise (sigma 0.25) for randomized smoothing (certify)",
}

DEFAULT_MODEL = "mnist-cnn"


def zoo_path(name: str) -> Path:
    return ZOO_DIR / name


def zoo_entries() -> list[tuple[str, str, bool]]:
    """(name, description, weights present) for every zoo entry."""
    return [(name, desc, (zoo_path(name) / "bastion.toml").is_file()) for name, desc in ZOO.items()]
