"""ONNX files for the tests: torch.onnx exports of small nets, and hand-built graphs.

torch.onnx's default (dynamo) exporter needs the onnxscript package, which is not installed
here; the TorchScript exporter (``dynamo=False``) needs only onnx and covers opsets 7-22.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn


def export(module: nn.Module, path: Path, *, opset: int = 13, dynamic_batch: bool = True, fold: bool = True,
           shape=(1, 28, 28), dynamic_axes=None) -> Path:
    module.eval()
    axes = dynamic_axes or ({"x": {0: "N"}, "logits": {0: "N"}} if dynamic_batch else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(module, (torch.rand(2, *shape),), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["logits"], dynamic_axes=axes, do_constant_folding=fold)
    return path


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class SmallResNet(nn.Module):
    """Residual blocks with batch norm, a strided conv, global average pooling and a view."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.block = Block(8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.block2 = Block(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)
        for bn in (self.block.bn1, self.block.bn2, self.block2.bn1, self.block2.bn2):  # non-trivial statistics
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.block2(self.down(self.block(self.stem(x))))
        x = self.pool(x)
        return self.fc(x.view(x.size(0), -1))


class Mixed(nn.Module):
    """The other operators exporters emit: normalisation arithmetic, Pad, Sigmoid, Tanh, Clip, Concat,
    AveragePool, a shape-computed Reshape, MatMul, Transpose, (Un)Squeeze, Softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(8 * 14 * 14, 10)
        self.mix = nn.Linear(10, 10)

    def forward(self, x):
        x = (x - 0.5) / 0.25
        x = F.pad(x, (1, 1, 1, 1))
        a = torch.sigmoid(self.conv(x))
        b = torch.tanh(self.conv(x)).clamp(-0.5, 0.5)
        y = F.avg_pool2d(torch.cat([a, b], 1), 2)
        z = self.fc(y.reshape(y.shape[0], -1)) * 2.0
        z = (z @ self.mix.weight.t()).unsqueeze(1).squeeze(1).transpose(0, 1).transpose(0, 1)
        return F.log_softmax(z, dim=1) + F.softmax(z, dim=1)


def graph_model(nodes, *, opset: int = 13, inputs=None, initializers=(), output_shape=("N", 3)) -> onnx.ModelProto:
    """A hand-built model: input ``x`` [N, 4] float, output ``y``."""
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                 list(output_shape))],
                              initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


LINEAR_WEIGHT = torch.arange(12, dtype=torch.float32).reshape(4, 3) % 5 - 2
LINEAR_BIAS = torch.tensor([0.1, -0.2, 0.3])


def linear_graph(*, opset: int = 13) -> onnx.ModelProto:
    """y = x @ W + b with a 4 x 3 weight initializer: a valid model to break in the tests."""
    weight = numpy_helper.from_array(LINEAR_WEIGHT.numpy(), "W")  # raw bytes, so they can be saved externally
    bias = numpy_helper.from_array(LINEAR_BIAS.numpy(), "b")
    return graph_model([helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
                        helper.make_node("Add", ["h", "b"], ["y"], name="add")],
                       opset=opset, initializers=[weight, bias])
