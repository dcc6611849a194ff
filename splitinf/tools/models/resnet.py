"""A ResNet-50-like ONNX model with random weights: realistic compute for benchmarks, nothing downloaded.

The architecture is torchvision's ResNet-50 (v1.5: the stride sits on the 3x3 convolution) with every
BatchNorm folded into its convolution as a bias, as an inference export would leave it:

    image [batch, 3, 224, 224] -> Conv 7x7/2 -> Relu -> MaxPool 3x3/2
      -> bottleneck blocks [3, 4, 6, 3] (1x1 -> 3x3 -> 1x1, residual Add, Relu)
      -> GlobalAveragePool -> Flatten -> Gemm -> logits [batch, num_classes]

At ``width=1.0`` and 1000 classes it has 25,530,472 parameters (torchvision's 25,557,032 minus the
26,560 BatchNorm scales that folding removes), about 102 MB of float32. ``width`` scales every
channel count, for small variants in tests.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from splitinf.errors import UsageError

__all__ = ["RESNET50_BLOCKS", "build_resnet50"]

RESNET50_BLOCKS = (3, 4, 6, 3)
_STAGE_WIDTHS = (64, 128, 256, 512)
_EXPANSION = 4
_OPSET = 17
_IR_VERSION = 9
# Each residual branch's last convolution is scaled down so the 16 Adds do not compound the
# activation variance (the random-weight stand-in for zero-initialised last BatchNorm scales).
_BRANCH_GAIN = 0.2
_BIAS_STD = 0.01


class _GraphBuilder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []

    def conv(
        self, x: str, name: str, c_in: int, c_out: int, kernel: int, stride: int = 1, gain: float = 1.0, group: int = 1
    ) -> str:
        # He initialisation keeps ReLU activations at a stable scale through depth.
        std = gain * math.sqrt(2.0 / (c_in // group * kernel * kernel))
        shape = (c_out, c_in // group, kernel, kernel)
        weight = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        bias = self.rng.standard_normal(c_out, dtype=np.float32) * np.float32(_BIAS_STD)
        self.initializers.append(numpy_helper.from_array(weight, f"{name}.weight"))
        self.initializers.append(numpy_helper.from_array(bias, f"{name}.bias"))
        pad = kernel // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}.weight", f"{name}.bias"],
                [name],
                name=name,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
                group=group,
            )
        )
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attributes: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name

    def bottleneck(self, x: str, name: str, c_in: int, width: int, stride: int) -> str:
        c_out = width * _EXPANSION
        branch = self.op("Relu", [self.conv(x, f"{name}.conv1", c_in, width, 1)], f"{name}.relu1")
        branch = self.op("Relu", [self.conv(branch, f"{name}.conv2", width, width, 3, stride)], f"{name}.relu2")
        branch = self.conv(branch, f"{name}.conv3", width, c_out, 1, gain=_BRANCH_GAIN)
        shortcut = x
        if stride != 1 or c_in != c_out:
            shortcut = self.conv(x, f"{name}.downsample", c_in, c_out, 1, stride)
        return self.op("Relu", [self.op("Add", [branch, shortcut], f"{name}.add")], f"{name}.relu3")


def _channels(base: int, width: float) -> int:
    return max(1, int(round(base * width)))


def build_resnet50(batch: int | str = 1, num_classes: int = 1000, seed: int = 0, width: float = 1.0) -> onnx.ModelProto:
    """ResNet-50-like model, input ``image`` float32 ``[batch, 3, 224, 224]``, output ``logits``.

    ``batch`` is a fixed size or the name of a symbolic dimension; weights are seeded He-normal.
    """
    if isinstance(batch, bool) or not isinstance(batch, (int, str)) or (isinstance(batch, int) and batch < 1):
        raise UsageError(f"batch must be a positive int or a dimension name, got {batch!r}")
    if isinstance(batch, str) and not batch.isidentifier():
        raise UsageError(f"a symbolic batch dimension needs an identifier name like 'batch', got {batch!r}")
    if num_classes < 1:
        raise UsageError(f"num_classes must be at least 1, got {num_classes}")
    if not (width > 0 and math.isfinite(width)):
        raise UsageError(f"width must be a positive channel multiplier (1.0 = ResNet-50), got {width}")

    builder = _GraphBuilder(seed)
    stem = _channels(64, width)
    x = builder.op("Relu", [builder.conv("image", "stem.conv", 3, stem, 7, 2)], "stem.relu")
    x = builder.op("MaxPool", [x], "stem.maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    channels = stem
    for stage, (blocks, base) in enumerate(zip(RESNET50_BLOCKS, _STAGE_WIDTHS, strict=True), start=1):
        stage_width = _channels(base, width)
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 1 else 1
            x = builder.bottleneck(x, f"layer{stage}.{block}", channels, stage_width, stride)
            channels = stage_width * _EXPANSION

    x = builder.op("GlobalAveragePool", [x], "avgpool")
    x = builder.op("Flatten", [x], "flatten", axis=1)
    fc_weight = builder.rng.standard_normal((num_classes, channels), dtype=np.float32) * np.float32(
        math.sqrt(1.0 / channels)
    )
    builder.initializers.append(numpy_helper.from_array(fc_weight, "fc.weight"))
    builder.initializers.append(numpy_helper.from_array(np.zeros(num_classes, dtype=np.float32), "fc.bias"))
    builder.op("Gemm", [x, "fc.weight", "fc.bias"], "logits", transB=1)

    graph = helper.make_graph(
        builder.nodes,
        "resnet50_random" if width == 1.0 else f"resnet50_random_w{width:g}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes])],
        initializer=builder.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET)],
        ir_version=_IR_VERSION,
        producer_name="splitinf.tools.models.resnet",
        doc_string=f"ResNet-50-like, random He-normal weights (seed {seed}, width {width:g}); for benchmarks only",
    )
    return model
