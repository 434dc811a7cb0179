"""ONNX models: read a file without running anything from it, convert it to torch for white-box
attacks, or run it on onnxruntime for forward-only ones.

Reading (:func:`read_onnx`) guarantees, before any other code sees the model:

- the file is at most :data:`~bastion.models.onnx_support.MAX_FILE_BYTES` and parses as an ONNX
  protobuf (parsed from bytes: the onnx package opens no file);
- external data is read only from regular files inside the model's own folder (a relative
  location, no ``..``, no absolute path, no symlink out), within the file's size and the
  :data:`~bastion.models.onnx_support.MAX_TOTAL_BYTES` budget, and inlined, so neither the
  converter nor onnxruntime ever opens another file;
- every node (subgraphs included) is in the default domain: no custom operators (which
  onnxruntime would need a native library for), no model-local functions; the default opset is
  in the supported range; the model passes ``onnx.checker``;
- one float input ``[N, ...]`` whose sizes after the batch dimension are fixed, and one output.

Anything else is one :class:`~bastion.errors.ModelError` line naming the file and the node or
field. A converted model is checked against onnxruntime on real samples before use
(:func:`check_conversion`; :func:`bastion.models.preparation.prepare` does it for attacks and
benchmarks), and already on a few random inputs when it loads.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import onnx
import onnxruntime
import torch
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto
from torch import nn

from bastion.errors import GradientUnavailable, ModelError, first_line
from bastion.models.loaded import LoadedModel, device_of
from bastion.models.onnx_graph import OnnxGraphModule, type_name
from bastion.models.onnx_ops import OPERATORS, SIZE_INPUTS
from bastion.models.onnx_support import MAX_FILE_BYTES, MAX_NODES, MAX_OPSET, MAX_TOTAL_BYTES, MIN_OPSET
from bastion.models.rows import fixed_chunks

#: The conversion agrees with onnxruntime when every logit is within ATOL + RTOL x the largest one.
ATOL = 1e-4
RTOL = 1e-4
#: Random inputs the conversion is checked on when it loads (the data check comes before use).
LOAD_CHECK_SAMPLES = 8
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class OnnxModel:
    """A checked ONNX model: self-contained bytes (external data inlined) and what bastion needs of it."""

    data: bytes
    sha256: str          # of the file as read (before inlining)
    where: str           # the file, for messages
    opset: int
    input_name: str
    input_shape: tuple[int, ...]  # after the batch dimension
    batch: int | None    # a fixed batch size the graph was exported with, or None
    output_name: str
    num_classes: int | None


def read_onnx(path: str | Path) -> OnnxModel:
    """Read and check ``path`` (see the module docstring)."""
    path = Path(path)
    where = str(path)
    try:
        if not path.is_file():
            raise ModelError(f"{where}: not a regular file")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)  # bounded even if the file grows after a size check
    except OSError as exc:
        raise ModelError(f"{where}: cannot read ({exc.strerror or exc})") from None
    size = len(raw)
    if size > MAX_FILE_BYTES:
        raise ModelError(f"{where}: more than the {MAX_FILE_BYTES} bytes bastion reads from an ONNX file")
    proto = ModelProto()
    try:
        proto.ParseFromString(raw)
    except Exception as exc:  # protobuf's DecodeError, or a RuntimeWarning-turned-error in odd builds
        raise ModelError(f"{where}: not an ONNX model (protobuf parse failed: {exc})") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise ModelError(f"{where}: not an ONNX model (no graph nodes)")
    _check_nodes(proto, where)
    opset = _default_opset(proto, where)
    _inline_external_data(proto, path.parent, where, budget=MAX_TOTAL_BYTES - size)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx.checker.ValidationError, or a C++ error for malformed protos
        raise ModelError(f"{where}: invalid ONNX model ({' '.join(str(exc).split())[:300]})") from None
    input_name, input_shape, batch = _the_input(proto.graph, where)
    output_name, num_classes = _the_output(proto.graph, where)
    return OnnxModel(data=proto.SerializeToString(), sha256=hashlib.sha256(raw).hexdigest(), where=where, opset=opset,
                     input_name=input_name, input_shape=input_shape, batch=batch, output_name=output_name,
                     num_classes=num_classes)


def load_onnx(path: str | Path, *, runtime: bool = False) -> LoadedModel:
    """A :class:`LoadedModel` of the ONNX file: converted to torch, or (``runtime``) on onnxruntime."""
    model = read_onnx(path)
    module = OnnxRuntimeModule(model) if runtime else to_torch(model)
    return LoadedModel(module=module, name=Path(path).stem, input_shape=model.input_shape,
                       num_classes=model.num_classes, source=str(path), format="onnx-runtime" if runtime else "onnx")


def to_torch(model: OnnxModel) -> nn.Module:
    """The model as torch operations, checked against onnxruntime on a few random inputs."""
    proto = onnx.load_model_from_string(model.data)
    graph = OnnxGraphModule(proto.graph, model.opset, model.input_name, model.output_name, OPERATORS, model.where,
                            input_shape=model.input_shape, batch=model.batch, size_inputs=SIZE_INPUTS)
    module = ConvertedOnnx(graph, model)
    generator = torch.Generator().manual_seed(0)
    check_conversion(module, torch.rand((LOAD_CHECK_SAMPLES, *model.input_shape), generator=generator))
    return module


class ConvertedOnnx(nn.Module):
    """An ONNX model converted to torch: the graph module, run in chunks of the graph's fixed batch size
    when it was exported with one, and the checked model it came from (for :func:`check_conversion`)."""

    def __init__(self, graph: OnnxGraphModule, model: OnnxModel) -> None:
        super().__init__()
        self.graph = graph
        self.onnx = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = self.onnx.batch
        if batch is None or len(x) == batch:
            return self.graph(x)
        return torch.cat([self.graph(chunk)[:rows] for chunk, rows in fixed_chunks(x, batch)])


class OnnxRuntimeModule(nn.Module):
    """The ONNX file on onnxruntime behind the ``nn.Module`` interface: forward only.

    Asking it for an input gradient raises :class:`~bastion.errors.GradientUnavailable`, which the
    runner and the indicators handle as a model without gradients.
    """

    forward_only = True

    def __init__(self, model: OnnxModel) -> None:
        super().__init__()
        self.onnx = model
        self._session = runtime_session(model)
        # The model's digest (checkpoints, reports) is over its state: give it the file's sha256.
        self.register_buffer("onnx_sha256", torch.tensor(list(bytes.fromhex(model.sha256)), dtype=torch.uint8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise GradientUnavailable(f"{self.onnx.where} runs on onnxruntime, which computes no input gradients; "
                                      "gradient attacks need the torch conversion (drop --onnx-runtime)")
        return run_on_session(self._session, self.onnx, x.detach()).to(x.device)


def run_on_session(session, model: OnnxModel, x: torch.Tensor) -> torch.Tensor:
    """The session's outputs for ``x`` (on the CPU), in chunks of the graph's fixed batch size if it has one."""
    try:
        outputs = [torch.from_numpy(session.run([model.output_name], {model.input_name: _numpy(chunk)})[0])[:rows]
                   for chunk, rows in fixed_chunks(x, model.batch or max(len(x), 1))]
    except Exception as exc:  # onnxruntime's own exception types, for a graph that fails on these inputs
        raise ModelError(f"{model.where}: onnxruntime fails on {len(x)} inputs ({first_line(exc, 300)})") from None
    return torch.cat(outputs) if outputs else torch.empty(0)


def _numpy(x: torch.Tensor):
    return x.detach().cpu().float().contiguous().numpy()


def runtime_session(model: OnnxModel):
    """An onnxruntime session over the model's self-contained bytes (CPU, the run's thread count)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: warnings would interleave with progress output
    try:
        return onnxruntime.InferenceSession(model.data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types (Fail, InvalidGraph, ...)
        raise ModelError(f"{model.where}: onnxruntime cannot run the model ({first_line(exc)})") from None


@dataclass(frozen=True)
class ConversionCheck:
    """The torch conversion against onnxruntime on some samples: it passed."""

    where: str
    samples: int
    max_abs_difference: float
    tolerance: float

    def to_dict(self) -> dict:
        return {"check": "onnx conversion against onnxruntime", "model": self.where, "samples": self.samples,
                "max_abs_difference": float(f"{self.max_abs_difference:.3g}"),
                "tolerance": float(f"{self.tolerance:.3g}")}


def check_conversion(module: nn.Module, x: torch.Tensor, batch_size: int = 256) -> list[ConversionCheck]:
    """Check every ONNX conversion inside ``module`` against onnxruntime on the samples ``x``.

    Passes when every logit is within ``ATOL + RTOL * max |logit|`` of onnxruntime's and the
    predicted classes are equal (except where onnxruntime's top two are within that tolerance:
    a tie either may break). Raises :class:`~bastion.errors.ModelError` otherwise.
    """
    checks = []
    for converted in [m for m in module.modules() if isinstance(m, ConvertedOnnx)]:
        model = converted.onnx
        session = runtime_session(model)
        device = device_of(converted)
        worst, scale, differ = 0.0, 0.0, 0
        for chunk in x.split(batch_size):
            expected = run_on_session(session, model, chunk)
            with torch.no_grad():
                got = converted(chunk.to(device)).cpu()
            if got.shape != expected.shape:
                raise ModelError(f"{model.where}: the torch conversion gives outputs of shape {list(got.shape)}, "
                                 f"onnxruntime {list(expected.shape)}")
            worst = max(worst, float((got.double() - expected.double()).abs().max()) if got.numel() else 0.0)
            scale = max(scale, float(expected.abs().max()) if expected.numel() else 0.0)
            differ += _prediction_changes(got, expected, ATOL + RTOL * scale)
        tolerance = ATOL + RTOL * scale
        if worst > tolerance or differ:
            raise ModelError(f"{model.where}: the torch conversion disagrees with onnxruntime on {len(x)} samples "
                             f"(largest logit difference {worst:.3g}, tolerance {tolerance:.3g}; {differ} "
                             "predictions differ); white-box attacks would attack another model (use "
                             "--onnx-runtime for forward-only attacks)")
        checks.append(ConversionCheck(model.where, len(x), worst, tolerance))
    return checks


def _prediction_changes(got: torch.Tensor, expected: torch.Tensor, tolerance: float) -> int:
    if got.dim() != 2 or got.shape[1] < 2:
        return 0
    top2 = expected.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > tolerance
    return int(((got.argmax(1) != expected.argmax(1)) & clear).sum())


# ---- reading ------------------------------------------------------------------------------------
def _graphs(graph: GraphProto):
    """The graph and every subgraph inside its nodes' attributes."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            subgraphs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)
            for sub in subgraphs:
                yield from _graphs(sub)


def _check_nodes(proto: ModelProto, where: str) -> None:
    if proto.functions:
        raise ModelError(f"{where}: model-local functions ({proto.functions[0].name!r}) are not supported")
    count = 0
    for graph in _graphs(proto.graph):
        if graph.sparse_initializer:
            raise ModelError(f"{where}: sparse initializers are not supported")
        for node in graph.node:
            count += 1
            if node.domain not in _DEFAULT_DOMAINS:
                raise ModelError(f"{where}: node {node.name or node.op_type!r} uses custom operator "
                                 f"{node.domain}.{node.op_type}; bastion runs only the standard ONNX operators")
            if not onnx.defs.has(node.op_type):
                raise ModelError(f"{where}: node {node.name or node.op_type!r} uses operator {node.op_type!r}, "
                                 "which is not an ONNX operator")
    if count > MAX_NODES:
        raise ModelError(f"{where}: {count} nodes, more than the {MAX_NODES} bastion converts")


def _default_opset(proto: ModelProto, where: str) -> int:
    versions = [o.version for o in proto.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise ModelError(f"{where}: imports no version of the default ONNX opset")
    opset = max(versions)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelError(f"{where}: opset {opset} is outside the {MIN_OPSET}-{MAX_OPSET} bastion supports "
                         "(re-export the model with an opset in that range)")
    return opset


def _tensors(proto: ModelProto):
    """Every TensorProto that can hold data: initializers and constant attributes, in every subgraph."""
    for graph in _graphs(proto.graph):
        yield from graph.initializer
        for node in graph.node:
            for a in node.attribute:
                if a.type == AttributeProto.TENSOR:
                    yield a.t
                yield from a.tensors


def _inline_external_data(proto: ModelProto, folder: Path, where: str, budget: int) -> None:
    root = folder.resolve()
    for tensor in _tensors(proto):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        what = f"{where}: tensor {tensor.name!r}: external data {location!r}"
        rel = PurePosixPath(location)
        if not location or "\\" in location or "\0" in location or rel.is_absolute() or ".." in rel.parts:
            raise ModelError(f"{what} is not a plain relative path inside the model's folder; refusing it")
        try:
            target = (root / rel).resolve(strict=True)
        except (OSError, RuntimeError):
            raise ModelError(f"{what}: no such file beside the model") from None
        if not target.is_relative_to(root) or not target.is_file():
            raise ModelError(f"{what} leads outside the model's folder or to something not a file; refusing it")
        try:
            offset, length = int(info.get("offset", 0)), info.get("length")
            size = target.stat().st_size
            length = size - offset if length is None else int(length)
        except (ValueError, OSError):
            raise ModelError(f"{what}: unreadable offset or length") from None
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelError(f"{what}: offset {offset} and length {length} lie outside the file ({size} bytes)")
        budget -= length
        if budget < 0:
            raise ModelError(f"{where}: the model and its external data exceed the {MAX_TOTAL_BYTES} bytes "
                             "bastion reads")
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            fh.seek(offset)
            tensor.raw_data = fh.read(length)
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT


def _the_input(graph: GraphProto, where: str) -> tuple[str, tuple[int, ...], int | None]:
    constants = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1:
        raise ModelError(f"{where}: the graph has {len(inputs)} inputs; bastion attacks models with one")
    value = inputs[0]
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or tensor.elem_type != TensorProto.FLOAT:
        kind = type_name(tensor.elem_type) if value.type.HasField("tensor_type") else "not a tensor"
        raise ModelError(f"{where}: input {value.name!r} is {kind}; bastion attacks float (FLOAT) inputs")
    dims = list(tensor.shape.dim) if tensor.HasField("shape") else []
    if len(dims) < 2:
        raise ModelError(f"{where}: input {value.name!r} has no [batch, ...] shape")
    for i, dim in enumerate(dims[1:], 1):
        if not dim.HasField("dim_value") or dim.dim_value <= 0:
            raise ModelError(f"{where}: input {value.name!r} dimension {i} is {dim.dim_param or 'unknown'!r}; "
                             "bastion needs fixed sizes after the batch dimension (a dynamic shape it cannot handle)")
    batch = dims[0].dim_value if dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    return value.name, tuple(d.dim_value for d in dims[1:]), batch


def _the_output(graph: GraphProto, where: str) -> tuple[str, int | None]:
    if len(graph.output) != 1:
        raise ModelError(f"{where}: the graph has {len(graph.output)} outputs; bastion needs one (the logits)")
    value = graph.output[0]
    tensor = value.type.tensor_type
    if tensor.elem_type != TensorProto.FLOAT:
        raise ModelError(f"{where}: output {value.name!r} is {type_name(tensor.elem_type)}; bastion needs FLOAT "
                         "logits or scores")
    dims = list(tensor.shape.dim) if tensor.HasField("shape") else []
    if dims and len(dims) != 2:
        raise ModelError(f"{where}: output {value.name!r} has {len(dims)} dimensions; bastion needs [batch, classes]")
    classes = dims[1].dim_value if dims and dims[1].HasField("dim_value") else None
    return value.name, classes or None
