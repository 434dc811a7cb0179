"""What bastion reads from an ONNX file: the opsets, operators and limits. Imports nothing heavy, so
``bastion models`` can list them without torch.

The operators are the ones :mod:`bastion.models.onnx_ops` converts to torch (it checks at import
that its table and :data:`OPERATORS` name the same set); onnxruntime, used for forward-only
attacks, runs any operator of the standard domain.
"""

from __future__ import annotations

#: Opsets of the default ONNX domain whose operator semantics the converter implements and the
#: tests exercise (torch.onnx's exporter at 7 to 22). 7 is the first with numpy broadcasting
#: everywhere; 23 and later change operators below in the element types they accept only, but
#: they are not claimed until tested.
MIN_OPSET = 7
MAX_OPSET = 22

#: Operators converted to torch, by use.
OPERATORS: dict[str, tuple[str, ...]] = {
    "layers": ("Conv", "Gemm", "MatMul", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool",
               "GlobalMaxPool", "Dropout"),
    "activations": ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Clip", "Erf"),
    "arithmetic": ("Add", "Sub", "Mul", "Div", "Pow", "Neg", "Abs", "Sqrt", "Exp", "Log", "Max", "Min", "Sum",
                   "ReduceMean"),
    "shapes": ("Flatten", "Reshape", "Transpose", "Concat", "Squeeze", "Unsqueeze", "Pad", "Slice", "Gather",
               "Shape", "Cast", "Constant", "ConstantOfShape", "Identity"),
}
SUPPORTED_OPS: frozenset[str] = frozenset(op for ops in OPERATORS.values() for op in ops)

#: Largest .onnx file read, and largest total of the file and its external data: small
#: classifiers are megabytes; the bound keeps a hostile file from exhausting memory.
MAX_FILE_BYTES = 512 * 1024 ** 2
MAX_TOTAL_BYTES = 1024 ** 3
#: Nodes in a graph (the converter interprets them one by one on every forward pass).
MAX_NODES = 100_000


def describe() -> list[str]:
    """Lines for ``bastion models``: what an ``.onnx`` reference may contain."""
    lines = [f"ONNX (.onnx files, or bundles with format = \"onnx\"): opsets {MIN_OPSET}-{MAX_OPSET} of the "
             "default domain, no custom operators or functions, external data only inside the model's folder, "
             f"at most {MAX_FILE_BYTES // 1024 ** 2} MiB; one float input [N, ...] with fixed sizes after the batch."]
    lines += [f"  {use}: {', '.join(ops)}" for use, ops in OPERATORS.items()]
    lines.append("  --onnx-runtime (and forward-only attacks) run the file on onnxruntime instead: any standard "
                 "operator, no gradients.")
    return lines
