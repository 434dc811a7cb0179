"""Datasets: the bundled MNIST subset, scikit-learn's digits, and user .npz / .pt files.

Every dataset comes out the same way: ``x`` a float32 tensor (N, C, H, W) inside
``bounds``, ``y`` an int64 tensor of class indices. Bad data raises
:class:`~bastion.errors.DataError` naming the problem.

A user ``.npz`` is read member by member: each array's ``.npy`` header (shape and dtype)
is checked against :data:`MAX_NPZ_BYTES` and against the bytes the member really holds
before anything is allocated, so a header that claims terabytes is one line, not a
``MemoryError``. Labels must be class indices below :data:`MAX_CLASSES`; a command checks
them against its model's class count (:meth:`Dataset.check_labels`).
"""

from __future__ import annotations

import lzma
import math
import stat
import tokenize
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from bastion.errors import DataError, detail
from bastion.fsutil import file_kind

#: The most bytes the arrays of one user .npz may hold together, as stored (a float32 copy of
#: uint8 images takes four times this).
MAX_NPZ_BYTES = 2 << 30
#: The most arrays one user .npz may hold.
MAX_NPZ_ARRAYS = 1_000
#: The largest class count bastion takes: labels must be below it.
MAX_CLASSES = 100_000

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
        """The first ``n`` samples, or all of them if there are fewer (the bundled splits are
        already shuffled and stratified). See :meth:`first` for exactly ``n``."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise DataError(f"sample count must be positive, got {n}")
        return Dataset(self.name, self.x[:n], self.y[:n], self.num_classes, self.bounds)

    def first(self, n: int) -> Dataset:
        """Exactly the first ``n`` samples: asking for more than the dataset holds is refused, never
        clamped (what ``--n`` means in every command)."""
        if n <= 0:
            raise DataError(f"sample count must be positive, got {n:,}")
        if n > len(self):
            raise DataError(f"{self.name} holds {len(self):,} samples, fewer than the {n:,} asked for "
                            f"(ask for at most {len(self):,})")
        return self.take(n)

    def check_labels(self, num_classes: int, whose: str = "the model") -> None:
        """Refuse labels that are not classes of ``whose`` (``num_classes`` of them): they would
        silently score as wrong."""
        top = int(self.y.max())
        if top >= num_classes:
            count = int((self.y >= num_classes).sum())
            raise DataError(f"{self.name}: label {top} is out of range for {whose}, which has {num_classes:,} "
                            f"classes (labels 0 to {num_classes - 1:,}); {count:,} sample(s) have such labels")

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
    x, labels = _as_tensor(x, name, "x"), _labels(y, name)
    if x.numel() == 0 or labels.size == 0:
        raise DataError(f"{name}: dataset is empty")
    if x.is_complex() or not (x.is_floating_point() or x.dtype == torch.uint8):
        raise DataError(f"{name}: x holds {str(x.dtype).removeprefix('torch.')} values; store images as uint8 "
                        "(0 to 255) or as floats inside the bounds")
    if x.dim() == 3:  # (N, H, W) grayscale
        x = x.unsqueeze(1)
    if x.dim() not in (2, 4):
        raise DataError(f"{name}: x must have shape (N, C, H, W), (N, H, W) or (N, D), got {tuple(x.shape)}")
    if len(x) != len(labels):
        raise DataError(f"{name}: x has {len(x)} samples but y has {len(labels)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    if not torch.isfinite(x).all():
        raise DataError(f"{name}: x contains NaN or Inf values")
    lo, hi = bounds
    low, high = x.min().item(), x.max().item()  # in x's own precision: float64 beyond float32 is caught here
    if low < lo or high > hi:
        raise DataError(f"{name}: x values span [{low:.4g}, {high:.4g}], "
                        f"outside the declared bounds [{lo}, {hi}]; rescale the data")
    x = x.float()
    y = torch.from_numpy(labels)
    inferred = int(labels.max()) + 1
    if num_classes is None:
        num_classes = max(inferred, 2)
    elif inferred > num_classes:
        raise DataError(f"{name}: label {inferred - 1} is out of range for {num_classes} classes")
    return Dataset(name, x.contiguous(), y.contiguous(), num_classes, (float(lo), float(hi)))


def _as_tensor(values, name: str, which: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return _dense(values, name, which)
    array = _as_array(values, name, which)
    if array.dtype.kind not in "biuf":
        raise DataError(f"{name}: {which} must hold numbers, got numpy dtype {array.dtype}")
    if array.dtype.kind == "u" and array.dtype.itemsize > 1:  # torch has no full uint16/32/64 support
        raise DataError(f"{name}: {which} holds {array.dtype} values; store images as uint8 (0 to 255) "
                        "or as floats inside the bounds")
    return torch.from_numpy(np.ascontiguousarray(array))


def _labels(values, name: str) -> np.ndarray:
    """``y`` as int64 class indices, checked in its own dtype (so no huge or fractional value wraps)."""
    if isinstance(values, torch.Tensor):
        values = _dense(values, name, "y")
        if values.is_complex() or values.dtype == torch.bool:
            raise DataError(f"{name}: y must hold integer class indices, got {values.dtype}")
        values = values.double() if values.is_floating_point() else values.long()
    y = _as_array(values, name, "y")
    if y.dtype.kind not in "iuf":
        raise DataError(f"{name}: y must hold integer class indices, got {y.dtype}")
    if y.ndim != 1:
        raise DataError(f"{name}: y must be a 1-D array of class indices, got shape {tuple(y.shape)}")
    if y.size == 0:
        return y.astype(np.int64)
    if y.dtype.kind == "f" and (not np.isfinite(y).all() or (y != np.round(y)).any()):
        raise DataError(f"{name}: y must hold integer class indices")
    low, high = y.min(), y.max()
    if low < 0:
        raise DataError(f"{name}: labels must be >= 0, found {_number(low)}")
    if high >= MAX_CLASSES:
        raise DataError(f"{name}: label {_number(high)} is out of range: bastion takes at most {MAX_CLASSES:,} "
                        "classes (labels are class indices 0, 1, 2, ...)")
    return y.astype(np.int64)


def _dense(values: torch.Tensor, name: str, which: str) -> torch.Tensor:
    """A plain dense CPU tensor; sparse, quantised-layout, nested or meta tensors are refused."""
    if values.layout != torch.strided or values.is_nested or values.is_meta:
        kind = "meta" if values.is_meta else "nested" if values.is_nested else str(values.layout).removeprefix("torch.")
        raise DataError(f"{name}: {which} is a {kind} tensor; store a plain dense tensor")
    return values.detach().cpu()


def _as_array(values, name: str, which: str) -> np.ndarray:
    try:
        return np.asarray(values)
    except (ValueError, TypeError) as exc:  # ragged lists, objects numpy cannot hold
        raise DataError(f"{name}: {which} is not an array of numbers ({detail(exc)})") from None


def _number(value) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{float(value):g}"


def read_npz(path: str | Path, *, required: tuple[str, ...] = ("x", "y"),
             max_bytes: int = MAX_NPZ_BYTES) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file, read without unpickling; the ``required`` ones must be there and
    hold numbers. The one reader of user ``.npz`` files (datasets, ``bastion sanitize``).

    Each member's ``.npy`` header is read first: an object dtype, a negative or oversized shape
    (the arrays together over ``max_bytes``) or a header that claims more or less data than the
    member holds is refused before any array is allocated.
    """
    path = Path(path)
    _check_file(path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        with handle, zipfile.ZipFile(handle) as archive, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's note on headers written by Python 2: one line stays one line
            members = _npz_members(archive, path, max_bytes)
            missing = [k for k in required if k not in members]
            if missing:
                names = " and ".join(repr(k) for k in required)
                wanted = f"arrays {names}" if len(required) > 1 else f"an array named {names}"
                raise DataError(f"{path}: expected {wanted}, found {sorted(members) or 'none'}")
            arrays = {}
            for key, info in members.items():
                with archive.open(info) as member:
                    arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError, NotImplementedError,
            RuntimeError, SyntaxError, tokenize.TokenError, RecursionError) as exc:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression method; the
        # last three: numpy parsing a .npy header that is not the Python literal it should be
        raise DataError(f"{path}: not a valid .npz file ({type(exc).__name__}: {detail(exc)})") from None
    for key in required:
        if arrays[key].dtype.kind not in "biuf":
            raise DataError(f"{path}: {key!r} must hold numbers, got dtype {arrays[key].dtype}")
    return arrays


def _npz_members(archive: zipfile.ZipFile, path: Path, max_bytes: int) -> dict[str, zipfile.ZipInfo]:
    """The array members of an open .npz, by array name, after checking every header (see read_npz)."""
    infos = archive.infolist()
    if len(infos) > MAX_NPZ_ARRAYS:
        raise DataError(f"{path}: holds {len(infos):,} members, more than the {MAX_NPZ_ARRAYS:,} arrays a .npz "
                        "may have here")
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename
        if not name.endswith(".npy") or info.is_dir():
            raise DataError(f"{path}: member {name!r} is not a .npy array (a .npz holds only .npy members)")
        key = name[:-len(".npy")]
        if key in members:
            raise DataError(f"{path}: two members are named {name!r}; readers would disagree which is {key!r}")
        total += _checked_array_bytes(archive, info, path, key)
        if total > max_bytes:
            raise DataError(f"{path}: its arrays hold {total:,} bytes or more, over the {max_bytes:,}-byte limit "
                            f"(bastion.data.MAX_NPZ_BYTES) for a .npz")
        members[key] = info
    return members


def _checked_array_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, key: str) -> int:
    """The bytes of array ``key`` as its header declares them, once checked against the member's size."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        elif version in ((2, 0), (3, 0)):  # 3.0 differs only in how field names are encoded
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise DataError(f"{path}: array {key!r} has .npy format version {version}, which numpy does not write")
        data_offset = member.tell()
    if dtype.hasobject:
        raise DataError(f"{path}: array {key!r} has dtype {dtype}, which only unpickling can read; "
                        "save plain numeric arrays")
    if any(d < 0 for d in shape):
        raise DataError(f"{path}: array {key!r} declares a negative shape {shape}")
    declared = math.prod(shape) * dtype.itemsize
    if declared + data_offset != info.file_size:
        raise DataError(f"{path}: array {key!r} declares shape {shape} of {dtype} ({declared:,} bytes), but its "
                        f"member holds {max(info.file_size - data_offset, 0):,} bytes of data (truncated or forged)")
    return max(declared, math.prod(shape))  # elements count too: a zero-size dtype is no free pass


def _check_file(path: Path) -> None:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path}: is {file_kind(info.st_mode)}, not a data file")
    if info.st_size == 0:
        raise DataError(f"{path}: file is empty")


def _read_pt(path: Path):
    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on what the file holds: the refusal is the one line
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
