"""Model bundles: a directory with the weights (.safetensors or .pt2) and a small bastion.toml.

    my-model/
      bastion.toml          name, version, input shape, bounds, classes, architecture, training info
      model.safetensors     weights (or model.pt2, a torch.export program, or model.onnx)

Loading never unpickles anything. The architecture is a name from
:data:`~bastion.models.architectures.ARCHITECTURES`; a ``module:factory``
reference imports code, so it is refused unless the caller passes ``trust_code=True``.
A ``pt2`` or ``onnx`` bundle needs no architecture (its file holds the graph); its
``architecture`` is informational.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from safetensors.torch import save_file
from torch import nn

from bastion.data import MAX_CLASSES
from bastion.errors import ModelError
from bastion.fsutil import atomic_path, atomic_write_text
from bastion.models.fit import check_declared_io
from bastion.models.formats import build_architecture, load_onnx_file, load_program, load_safetensors_into
from bastion.models.loaded import LoadedModel
from bastion.models.wrappers import bundle_wrapper
from bastion.tomlfile import read_toml

META_FILE = "bastion.toml"
WEIGHTS_FILE = "model.safetensors"
PROGRAM_FILE = "model.pt2"
ONNX_FILE = "model.onnx"
FORMATS = ("safetensors", "pt2", "onnx")


@dataclass
class BundleMeta:
    name: str
    architecture: str
    input_shape: list[int]
    num_classes: int
    version: str = "1"
    bounds: list[float] = field(default_factory=lambda: [0.0, 1.0])
    classes: list[str] = field(default_factory=list)
    format: str = "safetensors"
    training: dict[str, Any] = field(default_factory=dict)
    #: A sanitize recipe (see bastion.defenses.sanitizer); when set, loading wraps the model in
    #: the sanitiser (through the hook in bastion.models.wrappers), so attacks and benches
    #: evaluate model + sanitiser.
    sanitizer: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.classes:
            self.classes = [str(i) for i in range(self.num_classes)]


def save_bundle(module: nn.Module, out_dir: str | Path, meta: BundleMeta) -> Path:
    """Write ``module``'s weights and ``meta`` into ``out_dir`` (each file atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"bastion.name": meta.name})
    meta.format = "safetensors"
    atomic_write_text(out / META_FILE, tomli_w.dumps(_drop_none(asdict(meta))))
    return out


def read_meta(bundle_dir: str | Path) -> BundleMeta:
    path = Path(bundle_dir) / META_FILE
    if not path.is_file():
        raise ModelError(f"{bundle_dir}: not a model bundle (no {META_FILE})")
    raw = read_toml(path, ModelError)
    required = ("name", "architecture", "input_shape", "num_classes")
    missing = [k for k in required if k not in raw]
    if missing:
        raise ModelError(f"{path}: missing key(s) {', '.join(missing)}")
    known = set(BundleMeta.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise ModelError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    problem = _meta_problem(raw)
    if problem:
        raise ModelError(f"{path}: {problem}")
    try:
        meta = BundleMeta(**raw)
        meta.input_shape = [int(d) for d in meta.input_shape]
        meta.num_classes = int(meta.num_classes)
        meta.bounds = [float(b) for b in meta.bounds]
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{path}: bad value ({exc})") from None
    if meta.format not in FORMATS:
        raise ModelError(f"{path}: format must be one of {', '.join(FORMATS)}, got {meta.format!r}")
    return meta


#: The most values one sample of a bundle may have (a 4096 x 4096 RGB image is 50 million).
MAX_INPUT_VALUES = 1 << 28


def _meta_problem(raw: dict[str, Any]) -> str | None:
    """What is wrong with the shape, class count and bounds a bundle declares, or None."""
    shape = raw["input_shape"]
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        return f"input_shape must be a list of positive integers (one sample, e.g. [1, 28, 28]), got {shape!r}"
    if math.prod(shape) > MAX_INPUT_VALUES:
        return f"input_shape {shape} has more than {MAX_INPUT_VALUES:,} values per sample"
    classes = raw["num_classes"]
    if isinstance(classes, bool) or not isinstance(classes, int) or not 2 <= classes <= MAX_CLASSES:
        return f"num_classes must be an integer from 2 to {MAX_CLASSES:,}, got {classes!r}"
    bounds = raw.get("bounds", [0.0, 1.0])
    try:
        lo, hi = (float(b) for b in bounds if not isinstance(b, bool))
    except (TypeError, ValueError, OverflowError):
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi and math.isfinite(hi - lo)):
        return f"bounds must be two finite numbers [lo, hi] with lo < hi, got {bounds!r}"
    return None


#: BundleMeta fields that make the model something else; a higher layer registers their wrappers.
WRAPPED_SECTIONS = ("sanitizer",)


def load_bundle(bundle_dir: str | Path, *, trust_code: bool = False, onnx_runtime: bool = False) -> LoadedModel:
    """Load a bundle as a :class:`~bastion.models.loaded.LoadedModel` (an ``onnx`` one on onnxruntime
    with ``onnx_runtime``)."""
    bundle = Path(bundle_dir)
    meta = read_meta(bundle)
    kind = ""
    if meta.format == "pt2":
        module = load_program(bundle / PROGRAM_FILE)
    elif meta.format == "onnx":
        onnx_model = load_onnx_file(bundle / ONNX_FILE, onnx_runtime)
        if onnx_model.input_shape != tuple(meta.input_shape):
            raise ModelError(f"{bundle / META_FILE}: input_shape {meta.input_shape} differs from the ONNX graph's "
                             f"{list(onnx_model.input_shape)}")
        module, kind = onnx_model.module, onnx_model.format
    else:
        module = build_architecture(meta.architecture, meta.num_classes, trust_code=trust_code)
        load_safetensors_into(module, bundle / WEIGHTS_FILE)
    # Once here, commands compare data with the declared shape alone (bastion.models.fit).
    check_declared_io(module, tuple(meta.input_shape), meta.num_classes, tuple(meta.bounds), str(bundle / META_FILE))
    for section in WRAPPED_SECTIONS:
        value = getattr(meta, section)
        if value:
            wrap = bundle_wrapper(section)
            if wrap is None:
                raise ModelError(f"{bundle / META_FILE}: [{section}] needs a wrapper that nothing registered "
                                 "(see bastion.models.wrappers); refusing to load the model without it")
            module = wrap(module, value, f"{bundle / META_FILE}: {section}")
    return LoadedModel(module=module, name=meta.name, input_shape=tuple(meta.input_shape),
                       num_classes=meta.num_classes, bounds=tuple(meta.bounds), source=str(bundle), meta=meta,
                       format=kind)


def _drop_none(obj):
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj
