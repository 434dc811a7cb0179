"""The ONNX operators bastion converts, each as the torch operations that compute it.

A builder reads its node's attributes (any attribute it does not read is refused, so a setting
the converter does not implement never passes silently), checks the values it can check up
front, and returns the function of the node's inputs. Semantics follow the ONNX operator
specification for opsets :data:`~bastion.models.onnx_support.MIN_OPSET` to
:data:`~bastion.models.onnx_support.MAX_OPSET`, branching on the node's opset where an operator
changed (``Softmax`` before 13 flattens to 2-D; ``Clip``, ``Pad``, ``Squeeze``, ``Unsqueeze``,
``Slice``, ``ReduceMean`` moved attributes to inputs).

Integer tensors are shape arithmetic here; when a node mixes a CPU tensor with one on an
accelerator, the CPU one moves (:func:`_together`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
import torch
import torch.nn.functional as F

from bastion.models.onnx_graph import DTYPES, Builder, Node, type_name
from bastion.models.onnx_support import SUPPORTED_OPS

#: Largest tensor an operator may create from sizes in the file (ConstantOfShape, Pad): 2^28
#: elements, 1 GiB of float32. A hostile shape fails with one line instead of exhausting memory.
MAX_ELEMENTS = 1 << 28

OPERATORS: dict[str, Builder] = {}
#: The inputs each operator reads as sizes (through :func:`_ints`), by position. The graph module
#: may hand these over as tuples of Python ints worked out from the batch size (see onnx_graph).
SIZE_INPUTS: dict[str, tuple[int, ...]] = {"Reshape": (1,), "Pad": (1, 3), "Slice": (1, 2, 3, 4), "Squeeze": (1,),
                                           "Unsqueeze": (1,), "ConstantOfShape": (0,), "ReduceMean": (1,)}


def _op(*names: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        for name in names:
            OPERATORS[name] = builder
        return builder
    return register


def _together(*tensors):
    """The tensors on one device: CPU ones (shape arithmetic, constants) join an accelerator's."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) <= 1:
        return tensors
    target = next(d for d in devices if d.type != "cpu")
    return tuple(None if t is None else t.to(target) for t in tensors)


def _ints(value: torch.Tensor | tuple | None) -> list[int] | None:
    """Sizes from a tensor, or from the tuple the graph module computed (symbolic under torch.compile)."""
    if value is None or isinstance(value, tuple):
        return None if value is None else list(value)
    return [int(v) for v in value.reshape(-1).tolist()]


def _bounded(node: Node, shape: list[int]) -> list[int]:
    if any(s < 0 for s in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise node.error(f"would create a tensor of shape {shape} (at most {MAX_ELEMENTS} elements)")
    return shape


# ---- elementwise ------------------------------------------------------------------------------
_UNARY = {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Neg": torch.neg, "Abs": torch.abs,
          "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Erf": torch.erf, "Identity": lambda x: x}


@_op(*_UNARY)
def _unary(node: Node):
    return _UNARY[node.op]


def _divide(a, b):
    return a / b if a.is_floating_point() else torch.div(a, b, rounding_mode="trunc")


_BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _divide, "Pow": torch.pow}


@_op(*_BINARY)
def _binary(node: Node):
    fn = _BINARY[node.op]
    return lambda a, b: fn(*_together(a, b))


_VARIADIC = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add}


@_op(*_VARIADIC)
def _variadic(node: Node):
    fn = _VARIADIC[node.op]
    return lambda *xs: functools.reduce(fn, _together(*xs))


@_op("LeakyRelu")
def _leaky_relu(node: Node):
    alpha = node.attr("alpha", 0.01)
    return lambda x: F.leaky_relu(x, alpha)


@_op("Clip")
def _clip(node: Node):
    if node.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
        return (lambda x: x) if lo is None and hi is None else (lambda x: torch.clamp(x, lo, hi))

    def clip(x, lo=None, hi=None):
        x, lo, hi = _together(x, lo, hi)
        return x if lo is None and hi is None else torch.clamp(x, lo, hi)
    return clip


@_op("Softmax", "LogSoftmax")
def _softmax(node: Node):
    fn = F.softmax if node.op == "Softmax" else F.log_softmax
    axis = node.attr("axis", 1 if node.opset < 13 else -1)
    if node.opset >= 13:
        return lambda x: fn(x, dim=axis)

    def coerced(x):  # before opset 13: over all dimensions from axis on, as one
        at = axis % x.dim()
        return fn(x.reshape(math.prod(x.shape[:at]), -1), dim=1).reshape(x.shape)
    return coerced


# ---- layers -------------------------------------------------------------------------------------
def _padding(node: Node, x, auto_pad: str, pads, kernel, strides, dilations, *, value: float, native: Callable):
    """(input, padding for the torch op): symmetric padding the op takes natively, else padded here."""
    dims = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(dims):
            size = x.shape[2 + i]
            total = max((math.ceil(size / strides[i]) - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size, 0)
            small = total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
    elif auto_pad == "VALID" or not pads:
        begin = end = [0] * dims
    else:
        begin, end = list(pads[:dims]), list(pads[dims:])
    if begin == end and all(native(k, p) for k, p in zip(kernel, begin)):
        return x, tuple(begin)
    pairs = [p for i in reversed(range(dims)) for p in (begin[i], end[i])]
    return F.pad(x, pairs, value=value), (0,) * dims


def _check_auto_pad(node: Node) -> str:
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise node.error(f"auto_pad {auto_pad!r} is not an ONNX value")
    return auto_pad


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@_op("Conv")
def _conv(node: Node):
    auto_pad, pads = _check_auto_pad(node), node.attr("pads")
    strides, dilations, group = node.attr("strides"), node.attr("dilations"), node.attr("group", 1)
    kernel_shape = node.attr("kernel_shape")

    def conv(x, w, b=None):
        x, w, b = _together(x, w, b)
        dims = w.dim() - 2
        if dims not in _CONV or (kernel_shape and list(kernel_shape) != list(w.shape[2:])):
            raise node.error(f"weights of shape {list(w.shape)} do not fit a 1-3-D convolution with kernel_shape "
                             f"{kernel_shape}")
        s, d = strides or [1] * dims, dilations or [1] * dims
        x, padding = _padding(node, x, auto_pad, pads, list(w.shape[2:]), s, d, value=0.0, native=lambda k, p: True)
        return _CONV[dims](x, w, b, stride=s, padding=padding, dilation=d, groups=group)
    return conv


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pool_settings(node: Node) -> tuple:
    kernel = node.attr("kernel_shape")
    if not kernel or len(kernel) not in _MAX_POOL:
        raise node.error(f"kernel_shape {kernel} is not a 1-3-D pooling window")
    dims = len(kernel)
    strides, pads = node.attr("strides") or [1] * dims, node.attr("pads")
    dilations = node.attr("dilations") or [1] * dims
    return kernel, strides, pads, dilations, _check_auto_pad(node), bool(node.attr("ceil_mode", 0))


def _half_kernel(k: int, p: int) -> bool:
    return p <= k // 2  # torch's pools take at most half the window as padding


@_op("MaxPool")
def _max_pool(node: Node):
    kernel, strides, pads, dilations, auto_pad, ceil_mode = _pool_settings(node)
    if node.attr("storage_order", 0) != 0:
        raise node.error("storage_order 1 (column major) is not supported")
    if node.outputs > 1 and any(node.output_used[1:]):
        raise node.error("the Indices output is not supported")
    fn = _MAX_POOL[len(kernel)]

    def pool(x):
        padded, padding = _padding(node, x, auto_pad, pads, kernel, strides, dilations, value=-math.inf,
                                   native=_half_kernel)
        if ceil_mode and padded is not x:
            raise node.error("ceil_mode with padding torch cannot take natively is not supported")
        return fn(padded, kernel, strides, padding, dilations, ceil_mode=ceil_mode)
    return pool


@_op("AveragePool")
def _avg_pool(node: Node):
    kernel, strides, pads, dilations, auto_pad, ceil_mode = _pool_settings(node)
    if any(d != 1 for d in dilations):
        raise node.error("dilated average pooling is not supported")
    include_pad = bool(node.attr("count_include_pad", 0))
    fn = _AVG_POOL[len(kernel)]

    def pool(x):
        padded, padding = _padding(node, x, auto_pad, pads, kernel, strides, dilations, value=0.0, native=_half_kernel)
        if padded is not x and (ceil_mode or not include_pad):
            raise node.error("padding torch cannot take natively is supported only with count_include_pad=1 and "
                             "ceil_mode=0")
        return fn(padded, kernel, strides, padding, ceil_mode=ceil_mode, count_include_pad=include_pad)
    return pool


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node: Node):
    if node.op == "GlobalAveragePool":
        return lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
    return lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@_op("Gemm")
def _gemm(node: Node):
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    trans_a, trans_b = node.attr("transA", 0), node.attr("transB", 0)

    def gemm(a, b, c=None):
        a, b, c = _together(a, b, c)
        if not trans_a and trans_b and alpha == 1 and beta == 1 and (c is None or c.dim() == 1):
            return F.linear(a, b, c)  # a torch Linear layer, as exporters write it
        y = (a.t() if trans_a else a) @ (b.t() if trans_b else b)
        y = y if alpha == 1 else alpha * y
        return y if c is None else y + (c if beta == 1 else beta * c)
    return gemm


@_op("MatMul")
def _matmul(node: Node):
    return lambda a, b: torch.matmul(*_together(a, b))


@_op("BatchNormalization")
def _batch_norm(node: Node):
    eps = node.attr("epsilon", 1e-5)
    node.attr("momentum")  # a training setting: inference ignores it
    if node.attr("spatial", 1) != 1:
        raise node.error("spatial=0 (per-activation statistics) is not supported")
    if node.attr("training_mode", 0) or any(node.output_used[1:]):
        raise node.error("training mode (running statistics as outputs) is not supported")

    def batch_norm(x, scale, bias, mean, var):
        x, scale, bias, mean, var = _together(x, scale, bias, mean, var)
        return F.batch_norm(x, mean, var, scale, bias, training=False, eps=eps)
    return batch_norm


@_op("Dropout")
def _dropout(node: Node):
    node.attr("ratio")  # opsets before 12; only training uses it
    node.attr("seed")

    def dropout(x, ratio=None, training_mode=None):
        if training_mode is not None and bool(training_mode.reshape(-1)[0]):
            raise node.error("training_mode=true is not supported")
        return x if node.outputs == 1 else (x, torch.ones_like(x, dtype=torch.bool))
    return dropout


# ---- shapes -------------------------------------------------------------------------------------
@_op("Flatten")
def _flatten(node: Node):
    axis = node.attr("axis", 1)

    def flatten(x):
        at = axis % x.dim() if axis < 0 else axis
        return x.reshape(math.prod(x.shape[:at]), -1)
    return flatten


@_op("Reshape")
def _reshape(node: Node):
    allow_zero = node.attr("allowzero", 0)

    def reshape(x, shape):
        target = _ints(shape)
        if not allow_zero:  # 0 copies the input's size in that position
            target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
        return x.reshape(target)
    return reshape


@_op("Transpose")
def _transpose(node: Node):
    perm = node.attr("perm")
    return lambda x: x.permute(perm if perm else list(reversed(range(x.dim()))))


@_op("Concat")
def _concat(node: Node):
    axis = node.attr("axis")
    if axis is None:
        raise node.error("the axis attribute is required")
    return lambda *xs: torch.cat(_together(*xs), dim=axis)


def _axes(node: Node):
    """Axes from the attribute before opset 13; from then on they are the node's second input."""
    return node.attr("axes") if node.opset < 13 else None


@_op("Squeeze")
def _squeeze(node: Node):
    fixed = _axes(node)

    def squeeze(x, axes=None):
        wanted = fixed if fixed is not None else _ints(axes)
        if not wanted:
            wanted = [i for i, size in enumerate(x.shape) if size == 1]
        return x.squeeze(tuple(a % x.dim() for a in wanted)) if wanted else x
    return squeeze


@_op("Unsqueeze")
def _unsqueeze(node: Node):
    fixed = _axes(node)

    def unsqueeze(x, axes=None):
        wanted = fixed if fixed is not None else _ints(axes)
        rank = x.dim() + len(wanted)
        for a in sorted(a % rank for a in wanted):
            x = x.unsqueeze(a)
        return x
    return unsqueeze


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@_op("Pad")
def _pad(node: Node):
    mode = node.attr("mode", "constant")
    if mode not in _PAD_MODES:
        raise node.error(f"mode {mode!r} is not supported")
    fixed_pads, fixed_value = (node.attr("pads"), node.attr("value", 0.0)) if node.opset < 11 else (None, 0.0)

    def pad(x, pads=None, constant_value=None, axes=None):
        amounts = fixed_pads if node.opset < 11 else _ints(pads)
        rank = x.dim()
        along = list(range(rank)) if axes is None else [a % rank for a in _ints(axes)]
        if len(amounts) != 2 * len(along):
            raise node.error(f"{len(amounts)} pads for {len(along)} axes")
        begin, end = [0] * rank, [0] * rank
        for i, a in enumerate(along):
            begin[a], end[a] = amounts[i], amounts[len(along) + i]
        _bounded(node, [size + begin[d] + end[d] for d, size in enumerate(x.shape)])
        pairs = [p for d in reversed(range(rank)) for p in (begin[d], end[d])]
        while len(pairs) > 2 and pairs[-1] == 0 and pairs[-2] == 0:
            pairs = pairs[:-2]  # torch pads trailing dimensions; unpadded leading ones need no pair
        if mode == "constant":
            value = fixed_value if constant_value is None or not constant_value.numel() else float(constant_value)
            return F.pad(x, pairs, value=value)
        return F.pad(x, pairs, mode=_PAD_MODES[mode])
    return pad


@_op("Slice")
def _slice(node: Node):
    fixed = (node.attr("starts"), node.attr("ends"), node.attr("axes")) if node.opset < 10 else None

    def slice_(x, starts=None, ends=None, axes=None, steps=None):
        if fixed is not None:
            begins, stops, along, strides = fixed[0], fixed[1], fixed[2], None
        else:
            begins, stops, along, strides = _ints(starts), _ints(ends), _ints(axes), _ints(steps)
        along = along or list(range(len(begins)))
        strides = strides or [1] * len(begins)
        for a, start, stop, step in zip(along, begins, stops, strides):
            a %= x.dim()
            size = x.shape[a]
            if step == 0:
                raise node.error("a step of 0")
            if step > 0:  # Python's slice clamps exactly as ONNX specifies for positive steps
                index = [slice(None)] * x.dim()
                index[a] = slice(start, stop, step)
                x = x[tuple(index)]
                continue
            start = min(max(start + size if start < 0 else start, 0), size - 1)
            stop = min(max(stop + size if stop < 0 else stop, -1), size - 1)
            x = x.index_select(a, torch.arange(start, stop, step, device=x.device))
        return x
    return slice_


@_op("Gather")
def _gather(node: Node):
    axis = node.attr("axis", 0)

    def gather(data, indices):
        data, indices = _together(data, indices)
        at = axis % data.dim()
        index = indices.long()
        index = torch.where(index < 0, index + data.shape[at], index)
        picked = data.index_select(at, index.reshape(-1))
        return picked.reshape(tuple(data.shape[:at]) + tuple(index.shape) + tuple(data.shape[at + 1:]))
    return gather


@_op("Shape")
def _shape(node: Node):
    start, end = node.attr("start", 0), node.attr("end", None)
    return lambda x: torch.tensor(tuple(x.shape)[start:end], dtype=torch.int64)


@_op("Cast")
def _cast(node: Node):
    to = node.attr("to")
    if to not in DTYPES:
        raise node.error(f"casting to {type_name(to)} is not supported")
    node.attr("saturate")  # applies to float8 targets only, which are refused above
    dtype = DTYPES[to]
    return lambda x: x.to(dtype)


_CONSTANT_KINDS = ("value", "value_float", "value_floats", "value_int", "value_ints")


@_op("Constant")
def _constant(node: Node):
    given = {kind: node.attr(kind) for kind in _CONSTANT_KINDS}
    given = {kind: value for kind, value in given.items() if value is not None}
    if len(given) != 1:
        raise node.error("needs exactly one of value, value_float(s), value_int(s) (sparse and string "
                         "constants are not supported)")
    kind, value = next(iter(given.items()))
    if kind != "value":
        value = torch.tensor(value, dtype=torch.float32 if "float" in kind else torch.int64)
    return lambda: value


@_op("ConstantOfShape")
def _constant_of_shape(node: Node):
    value = node.attr("value")
    fill = torch.zeros(1) if value is None else value.reshape(-1)
    if fill.numel() != 1:
        raise node.error("value must hold one element")

    def constant_of_shape(shape):
        device = shape.device if isinstance(shape, torch.Tensor) else None
        return torch.full(_bounded(node, _ints(shape)), fill.item(), dtype=fill.dtype, device=device)
    return constant_of_shape


@_op("ReduceMean")
def _reduce_mean(node: Node):
    keep = bool(node.attr("keepdims", 1))
    fixed = node.attr("axes") if node.opset < 18 else None
    noop_empty = bool(node.attr("noop_with_empty_axes", 0))

    def reduce_mean(x, axes=None):
        wanted = fixed if fixed is not None else _ints(axes)
        if not wanted:
            if noop_empty:
                return x
            wanted = list(range(x.dim()))
        return x.mean(dim=tuple(wanted), keepdim=keep)
    return reduce_mean


if set(OPERATORS) != SUPPORTED_OPS:  # one list of what is supported: onnx_support.py, which needs no torch
    raise ImportError(f"onnx_ops and onnx_support disagree: {sorted(set(OPERATORS) ^ SUPPORTED_OPS)}")

