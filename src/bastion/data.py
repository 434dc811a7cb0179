"""Datasets: the bundled MNIST subset, scikit-learn's digits, and user .npz / .pt files.

Every dataset comes out the same way: ``x`` a float32 tensor (N, C, H, W) inside
``bounds``, ``y`` an int64 tensor of class indices. Bad data raises
:class:`~bastion.errors.DataError` naming the problem.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from bastion.errors import DataError

BUILTIN = ("mnist", "digits")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Dataset:
    name: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    bounds: tuple[float, float] = (0.0, 1.0)

    def __len__(self) -> int:
        return len(self.y)

    def take(self, n: int | None) -> Dataset:
        """The first ``n`` samples (the bundled splits are already shuffled and stratified)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise DataError(f"sample count must be positive, got {n}")
        return Dataset(self.name, self.x[:n], self.y[:n], self.num_classes, self.bounds)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def load_data(ref: str | Path, split: str = "test", *, num_classes: int | None = None,
              bounds: tuple[float, float] = (0.0, 1.0)) -> Dataset:
    """Load ``mnist`` / ``digits`` (``split`` = train | test) or a ``.npz`` / ``.pt`` file with ``x`` and ``y``."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use train or test")
    ref_str = str(ref)
    if ref_str == "mnist":
        return _bundled_mnist(split)
    if ref_str == "digits":
        return _digits(split)
    path = Path(ref_str)
    if path.suffix == ".npz":
        arrays = read_npz(path, required=("x", "y"))
        x, y = arrays["x"], arrays["y"]
    elif path.suffix in (".pt", ".pth"):
        x, y = _read_pt(path)
    else:
        raise DataError(f"unknown dataset {ref_str!r}: use mnist, digits, or a .npz/.pt file with x and y")
    return from_arrays(x, y, name=path.name, num_classes=num_classes, bounds=bounds)


def from_arrays(x, y, *, name: str = "arrays", num_classes: int | None = None,
                bounds: tuple[float, float] = (0.0, 1.0)) -> Dataset:
    """Validate user arrays and turn them into a :class:`Dataset`."""
    x, y = _as_tensor(x, name, "x"), _as_tensor(y, name, "y")
    if x.numel() == 0 or y.numel() == 0:
        raise DataError(f"{name}: dataset is empty")
    if not (x.is_floating_point() or x.dtype == torch.uint8):
        raise DataError(f"{name}: x must hold floats (or uint8 images), got {x.dtype}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.dim() == 3:  # (N, H, W) grayscale
        x = x.unsqueeze(1)
    if x.dim() not in (2, 4):
        raise DataError(f"{name}: x must have shape (N, C, H, W), (N, H, W) or (N, D), got {tuple(x.shape)}")
    if y.dim() != 1:
        raise DataError(f"{name}: y must be a 1-D array of class indices, got shape {tuple(y.shape)}")
    if y.is_floating_point():
        if not torch.isfinite(y).all() or (y != y.round()).any():
            raise DataError(f"{name}: y must hold integer class indices")
    elif y.dtype == torch.bool or y.is_complex():
        raise DataError(f"{name}: y must hold integer class indices, got {y.dtype}")
    y = y.long()
    if len(x) != len(y):
        raise DataError(f"{name}: x has {len(x)} samples but y has {len(y)}")
    if not torch.isfinite(x).all():
        raise DataError(f"{name}: x contains NaN or Inf values")
    lo, hi = bounds
    if x.min() < lo or x.max() > hi:
        raise DataError(f"{name}: x values span [{x.min().item():.4g}, {x.max().item():.4g}], "
                        f"outside the declared bounds [{lo}, {hi}]; rescale the data")
    if y.min() < 0:
        raise DataError(f"{name}: labels must be >= 0, found {y.min().item()}")
    inferred = int(y.max().item()) + 1
    if num_classes is None:
        num_classes = max(inferred, 2)
    elif inferred > num_classes:
        raise DataError(f"{name}: label {inferred - 1} is out of range for {num_classes} classes")
    return Dataset(name, x.contiguous(), y.contiguous(), num_classes, (float(lo), float(hi)))


def _as_tensor(values, name: str, which: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise DataError(f"{name}: {which} must hold numbers, got numpy dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array))


def read_npz(path: str | Path, *, required: tuple[str, ...] = ("x", "y")) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file, read without unpickling; the ``required`` ones must be there and
    hold numbers. The one reader of user ``.npz`` files (datasets, ``bastion sanitize``)."""
    path = Path(path)
    _check_file(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in required if k not in archive.files]
            if missing:
                names = " and ".join(repr(k) for k in required)
                wanted = f"arrays {names}" if len(required) > 1 else f"an array named {names}"
                raise DataError(f"{path}: expected {wanted}, found {sorted(archive.files) or 'none'}")
            arrays = {key: archive[key] for key in archive.files}
    except DataError:
        raise
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise DataError(f"{path}: cannot read without unpickling ({exc}); save plain numeric arrays") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a valid .npz file ({exc})") from None
    for key in required:
        if arrays[key].dtype.kind not in "biuf":
            raise DataError(f"{path}: {key!r} must hold numbers, got dtype {arrays[key].dtype}")
    return arrays


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


def _read_pt(path: Path):
    _check_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise DataError(f"{path}: cannot load as tensors with weights_only=True ({type(exc).__name__})") from None
    if isinstance(obj, dict) and {"x", "y"} <= set(obj):
        return obj["x"], obj["y"]
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj[0], obj[1]
    raise DataError(f"{path}: expected a dict with 'x' and 'y' tensors or an (x, y) pair")


def _bundled_mnist(split: str) -> Dataset:
    with resources.files("bastion._bundled").joinpath("mnist_5k.npz").open("rb") as fh:
        with np.load(fh, allow_pickle=False) as archive:
            x = archive[f"x_{split}"]
            y = archive[f"y_{split}"]
    x = torch.from_numpy(x).float().div_(255.0).unsqueeze(1)
    return Dataset(f"mnist:{split}", x, torch.from_numpy(y).long(), 10)


def _digits(split: str) -> Dataset:
    from sklearn.datasets import load_digits  # heavy: only for the digits dataset

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)
    y = torch.from_numpy(digits.target).long()
    # Fixed permutation so the split is the same everywhere; 20% test.
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = len(y) - len(y) // 5
    idx = order[:cut] if split == "train" else order[cut:]
    return Dataset(f"digits:{split}", x[idx], y[idx], 10)
