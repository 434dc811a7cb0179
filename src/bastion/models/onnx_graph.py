"""An ONNX graph as a torch module: each node runs as torch operations, so input gradients flow and
white-box attacks work on a model that arrived as an ``.onnx`` file.

:class:`OnnxGraphModule` is built once from a checked graph (:mod:`bastion.models.onnx` reads and
checks the file): initializers become parameters (floating point) or buffers, nodes whose inputs
are all constant are evaluated once at build time (the shape arithmetic exporters emit around
``Pad``), and the remaining nodes become a list of steps that :meth:`OnnxGraphModule.forward`
runs in the graph's order.

Sizes computed from the input's shape (``Shape`` -> ``Gather`` -> ``Concat`` -> ``Reshape``, as
exporters write ``x.view(x.size(0), -1)``) are worked out once, here: every value an operator
reads as sizes is computed on dummy inputs of three batch sizes, and when it is an affine
function of the batch size (``a * N + c``, exactly, on all three) it is computed that way from
then on, as Python integers, and the nodes that computed it are dropped. So ``torch.compile``
traces the sizes symbolically instead of breaking the graph on a tensor's values, and eager runs
skip the small tensor arithmetic. Sizes that are not affine stay tensor computations.

What each operator does is in :mod:`bastion.models.onnx_ops`; the conversion is checked against
onnxruntime before use (:func:`bastion.models.onnx.check_conversion`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from onnx import AttributeProto, GraphProto, NodeProto, TensorProto, numpy_helper
from torch import nn

from bastion.errors import ModelError, first_line

#: ONNX element type -> torch dtype, for the types the converter handles.
DTYPES: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32, TensorProto.DOUBLE: torch.float64, TensorProto.FLOAT16: torch.float16,
    TensorProto.INT8: torch.int8, TensorProto.INT16: torch.int16, TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64, TensorProto.UINT8: torch.uint8, TensorProto.BOOL: torch.bool,
}


def type_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"type {elem_type}"


def tensor_from_proto(proto: TensorProto, where: str) -> torch.Tensor:
    """A TensorProto (data inline; the loader has resolved external data) as a torch tensor."""
    if proto.data_type not in DTYPES:
        raise ModelError(f"{where}: tensor {proto.name!r} has element type {type_name(proto.data_type)}, which "
                         "bastion does not convert")
    if proto.data_location == TensorProto.EXTERNAL:
        raise ModelError(f"{where}: tensor {proto.name!r} still refers to external data")
    try:
        array = numpy_helper.to_array(proto)
    except Exception as exc:  # onnx raises ValueError, TypeError... for sizes that do not match the data
        raise ModelError(f"{where}: tensor {proto.name!r} is malformed ({type(exc).__name__}: {exc})") from None
    return torch.from_numpy(np.array(array, copy=True))


class Node:
    """What an operator's builder sees of one node: its attributes (each read is recorded, and
    :meth:`finish` refuses any attribute no builder read), the opset, and how to fail naming it."""

    def __init__(self, proto: NodeProto, opset: int, where: str) -> None:
        self.op = proto.op_type
        self.name = proto.name or (proto.output[0] if proto.output else "?")
        self.opset = opset
        self.outputs = len(proto.output)
        self.output_used = [bool(name) for name in proto.output]
        self._where = where
        self._attributes = {a.name: a for a in proto.attribute}
        self._read: set[str] = set()

    def error(self, message: str) -> ModelError:
        return ModelError(f"{self._where}: node {self.name!r} ({self.op}): {message}")

    def attr(self, name: str, default: Any = None) -> Any:
        self._read.add(name)
        attribute = self._attributes.get(name)
        return default if attribute is None else self._value(attribute)

    def finish(self) -> None:
        unread = sorted(set(self._attributes) - self._read)
        if unread:
            raise self.error(f"attribute {unread[0]!r} is not supported")

    def _value(self, a: AttributeProto) -> Any:
        kinds = {AttributeProto.FLOAT: lambda: a.f, AttributeProto.INT: lambda: a.i,
                 AttributeProto.STRING: lambda: a.s.decode("utf-8", "replace"),
                 AttributeProto.TENSOR: lambda: tensor_from_proto(a.t, self._where),
                 AttributeProto.FLOATS: lambda: list(a.floats), AttributeProto.INTS: lambda: list(a.ints)}
        if a.type not in kinds:
            raise self.error(f"attribute {a.name!r} is of kind {AttributeProto.AttributeType.Name(a.type)}, "
                             "which bastion does not convert")
        return kinds[a.type]()


#: builder(node) -> the function computing the node's outputs from its inputs (None for an absent one).
Builder = Callable[[Node], Callable[..., Any]]


@dataclass(frozen=True)
class Step:
    run: Callable[..., Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    op: str
    node: str  # for errors


#: Batch sizes the sizes of a graph with a dynamic batch are worked out on (see the module docstring).
PROBE_BATCHES = (2, 3, 5)


class OnnxGraphModule(nn.Module):
    """Evaluates one ONNX graph (one float input, one output) with torch operations.

    ``size_inputs`` names, per operator, the inputs it reads as sizes; ``input_shape`` (after the
    batch) and ``batch`` (a fixed batch size, or None) are the graph input's.
    """

    def __init__(self, graph: GraphProto, opset: int, input_name: str, output_name: str, operators: dict[str, Builder],
                 where: str, *, input_shape: tuple[int, ...], batch: int | None,
                 size_inputs: dict[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.where = where
        self.input_name, self.output_name = input_name, output_name
        self._sizes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # value name -> (a, c): a * N + c
        self._slots: dict[str, str] = {}  # ONNX value name -> attribute holding a constant
        for proto in graph.initializer:
            self._hold(proto.name, tensor_from_proto(proto, where))
        known = set(self._slots) | {input_name}
        self._steps: list[Step] = []
        for proto in graph.node:
            if proto.op_type not in operators:
                raise ModelError(f"{where}: node {proto.name or proto.output[0]!r} uses operator {proto.op_type}, "
                                 "which bastion cannot convert (see `bastion models`; --onnx-runtime runs it on "
                                 "onnxruntime for forward-only attacks)")
            node = Node(proto, opset, where)
            run = operators[proto.op_type](node)
            node.finish()
            missing = [name for name in proto.input if name and name not in known]
            if missing:
                raise node.error(f"input {missing[0]!r} is not defined by an earlier node, initializer or the input")
            step = Step(run, tuple(proto.input), tuple(proto.output), proto.op_type, node.name)
            if all(not name or name in self._slots for name in proto.input):
                self._fold(step, node)  # depends on constants only: evaluate once, here
            else:
                self._steps.append(step)
            known.update(name for name in proto.output if name)
        if output_name not in known:
            raise ModelError(f"{where}: no node computes the graph output {output_name!r}")
        self._specialize_sizes(size_inputs, input_shape, batch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[self.output_name]

    def _run(self, x: torch.Tensor, sizes: bool = True) -> dict[str, Any]:
        values = {name: getattr(self, slot) for name, slot in self._slots.items()}
        values[self.input_name] = x
        if sizes:
            n = x.shape[0]
            values.update({name: tuple(ai * n + ci for ai, ci in zip(a, c)) for name, (a, c) in self._sizes.items()})
        for step in self._steps:
            try:
                result = step.run(*[values[name] if name else None for name in step.inputs])
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                raise ModelError(f"{self.where}: node {step.node!r} failed on these inputs "
                                 f"({first_line(exc)})") from None
            _store(values, step, result)
        return values

    def _specialize_sizes(self, size_inputs: dict[str, tuple[int, ...]], input_shape: tuple[int, ...],
                          batch: int | None) -> None:
        consumers: dict[str, set[bool]] = {}  # value -> for each use: is it read as sizes?
        for step in self._steps:
            for i, name in enumerate(step.inputs):
                consumers.setdefault(name, set()).add(i in size_inputs.get(step.op, ()))
        linear = _LinearInBatch(self._steps, set(self._slots))
        candidates = {name for name, uses in consumers.items()
                      if uses == {True} and name not in self._slots and name != self.input_name and linear(name)}
        if not candidates:
            return
        batches = (batch,) * len(PROBE_BATCHES) if batch else PROBE_BATCHES
        generator = torch.Generator().manual_seed(0)
        try:
            with torch.no_grad():
                runs = [self._run(torch.rand((b, *input_shape), generator=generator), sizes=False) for b in batches]
        except ModelError:
            return  # the graph does not run at these batch sizes: keep computing its sizes as it says
        for name in sorted(candidates):
            fit = _affine([run[name] for run in runs], batches)
            if fit is not None:
                self._sizes[name] = fit
        if self._sizes:
            self._drop_dead_steps()

    def _drop_dead_steps(self) -> None:
        needed = {self.output_name}
        kept = []
        for step in reversed(self._steps):
            if any(name in needed for name in step.outputs if name):
                kept.append(step)
                needed.update(name for name in step.inputs if name and name not in self._sizes)
        self._steps = kept[::-1]

    def _hold(self, name: str, tensor: torch.Tensor) -> None:
        slot = f"c{len(self._slots)}"
        if tensor.is_floating_point():
            self.register_parameter(slot, nn.Parameter(tensor, requires_grad=False))
        else:
            self.register_buffer(slot, tensor)
        self._slots[name] = slot

    def _fold(self, step: Step, node: Node) -> None:
        inputs = [getattr(self, self._slots[name]) if name else None for name in step.inputs]
        try:
            with torch.no_grad():
                result = step.run(*inputs)
        except ModelError:
            raise
        except Exception as exc:  # the file's constants do not fit the operator
            raise node.error(f"cannot be evaluated on its constant inputs ({first_line(exc)})") from None
        values: dict[str, Any] = {}
        _store(values, step, result)
        for name, value in values.items():
            self._hold(name, value.detach())


class _LinearInBatch:
    """Whether a value is, by the operators that compute it, an affine function of the batch size for
    every batch size, not only the probed ones: sizes read from a shape, then only selected,
    concatenated, added, subtracted or scaled by constants. (A ``Min(N, 5)`` or a product of two
    sizes would fit a line on three batch sizes and leave it elsewhere.)"""

    #: operator -> the input positions that may depend on the batch; every other input must be constant
    _PASS = {"Gather": (0,), "Unsqueeze": (0,), "Squeeze": (0,), "Slice": (0,), "Reshape": (0,), "Cast": (0,),
             "Identity": (0,), "Neg": (0,), "Concat": None, "Add": None, "Sub": None}
    _SCALE = ("Mul",)  # one input may depend on the batch, the other must be constant

    def __init__(self, steps: list[Step], constants: set[str]) -> None:
        self._producer = {name: step for step in steps for name in step.outputs if name}
        self._constants = constants
        self._memo: dict[str, bool] = {}

    def __call__(self, name: str) -> bool:
        if name not in self._memo:
            self._memo[name] = False  # a cycle is not linear (and ONNX graphs have none)
            self._memo[name] = self._decide(name)
        return self._memo[name]

    def _decide(self, name: str) -> bool:
        if name in self._constants:
            return True
        step = self._producer.get(name)
        if step is None:
            return False  # the graph input: data, not sizes
        if step.op == "Shape":
            return True
        inputs = [n for n in step.inputs if n]
        if step.op in self._SCALE:
            return sum(n not in self._constants for n in inputs) <= 1 and all(self(n) for n in inputs)
        if step.op not in self._PASS:
            return False
        varying = self._PASS[step.op]
        return all(self(n) if varying is None or i in varying else n in self._constants
                   for i, n in enumerate(step.inputs) if n)


def _affine(samples: list[Any], batches: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(a, c) with ``sample == a * batch + c`` exactly for every batch size probed, or None."""
    if not all(isinstance(t, torch.Tensor) and t.dtype in (torch.int64, torch.int32) and t.dim() <= 1
               and t.shape == samples[0].shape for t in samples):
        return None
    values = [t.reshape(-1).tolist() for t in samples]
    b0, b1 = batches[0], batches[-1]
    if b0 == b1:  # a fixed batch: constant sizes
        a = [0] * len(values[0])
    elif any((y - x) % (b1 - b0) for x, y in zip(values[0], values[-1])):
        return None
    else:
        a = [(y - x) // (b1 - b0) for x, y in zip(values[0], values[-1])]
    c = [x - ai * b0 for x, ai in zip(values[0], a)]
    if any([ai * b + ci for ai, ci in zip(a, c)] != v for b, v in zip(batches, values)):
        return None
    return tuple(a), tuple(c)


def _store(values: dict[str, Any], step: Step, result: Any) -> None:
    if len(step.outputs) == 1:
        values[step.outputs[0]] = result
        return
    for name, value in zip(step.outputs, result):
        if name:
            values[name] = value
