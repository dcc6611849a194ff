"""An EfficientNet-B0-like ONNX model with random weights, built with ``onnx.helper``: nothing downloaded.

torchvision is not installed here and model hubs are off limits, so this stands in for the real
EfficientNet-B0 in benchmarks: the same stages of MBConv blocks (1x1 expansion, depthwise k x k
convolution, squeeze-and-excitation, 1x1 projection, residual Add where the shape allows) with
swish (``x * Sigmoid(x)``) activations, every BatchNorm folded into its convolution as a bias:

    image [batch, 3, 224, 224] -> Conv 3x3/2 (32) -> swish
      -> MBConv stages (expand, kernel, stride, channels, repeats):
         (1,3,1,16,1) (6,3,2,24,2) (6,5,2,40,2) (6,3,2,80,3) (6,5,1,112,3) (6,5,2,192,4) (6,3,1,320,1)
      -> Conv 1x1 (1280) -> swish -> GlobalAveragePool -> Flatten -> Gemm -> logits [batch, 1000]

About 5.3 million parameters (torchvision's 5,288,548 less the folded BatchNorm scales), 21 MB
of float32. Stochastic depth and dropout are training-only and absent.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from splitinf.tools.models.resnet import _GraphBuilder

__all__ = ["EFFICIENTNET_B0_STAGES", "build_efficientnet_b0"]

# (expansion, kernel, stride, output channels, blocks)
EFFICIENTNET_B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
_STEM = 32
_HEAD = 1280
_SE_RATIO = 0.25
_OPSET = 17
_IR_VERSION = 9


class _Builder(_GraphBuilder):
    def swish(self, x: str, name: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x], f"{name}.sigmoid")], name)

    def squeeze_excite(self, x: str, name: str, channels: int, squeezed: int) -> str:
        pooled = self.op("GlobalAveragePool", [x], f"{name}.pool")
        reduced = self.swish(self.conv(pooled, f"{name}.reduce", channels, squeezed, 1), f"{name}.swish")
        gate = self.op("Sigmoid", [self.conv(reduced, f"{name}.expand", squeezed, channels, 1)], f"{name}.gate")
        return self.op("Mul", [x, gate], f"{name}.scale")

    def mbconv(self, x: str, name: str, c_in: int, c_out: int, expansion: int, kernel: int, stride: int) -> str:
        hidden = c_in * expansion
        branch = x
        if expansion != 1:
            branch = self.swish(self.conv(branch, f"{name}.expand", c_in, hidden, 1), f"{name}.expand_swish")
        branch = self.conv(branch, f"{name}.depthwise", hidden, hidden, kernel, stride, group=hidden)
        branch = self.swish(branch, f"{name}.depthwise_swish")
        branch = self.squeeze_excite(branch, f"{name}.se", hidden, max(1, int(c_in * _SE_RATIO)))
        branch = self.conv(branch, f"{name}.project", hidden, c_out, 1, gain=0.5)
        if stride == 1 and c_in == c_out:
            return self.op("Add", [branch, x], f"{name}.add")
        return branch


def build_efficientnet_b0(batch: int | str = 1, num_classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """EfficientNet-B0-like model, input ``image`` float32 ``[batch, 3, 224, 224]``, output ``logits``."""
    builder = _Builder(seed)
    x = builder.swish(builder.conv("image", "stem.conv", 3, _STEM, 3, 2), "stem.swish")
    channels = _STEM
    for stage, (expansion, kernel, stride, c_out, blocks) in enumerate(EFFICIENTNET_B0_STAGES, start=1):
        for block in range(blocks):
            x = builder.mbconv(
                x, f"stage{stage}.{block}", channels, c_out, expansion, kernel, stride if block == 0 else 1
            )
            channels = c_out
    x = builder.swish(builder.conv(x, "head.conv", channels, _HEAD, 1), "head.swish")
    x = builder.op("Flatten", [builder.op("GlobalAveragePool", [x], "avgpool")], "flatten", axis=1)
    fc_weight = builder.rng.standard_normal((num_classes, _HEAD), dtype=np.float32) * np.float32(math.sqrt(1.0 / _HEAD))
    builder.initializers.append(numpy_helper.from_array(fc_weight, "fc.weight"))
    builder.initializers.append(numpy_helper.from_array(np.zeros(num_classes, dtype=np.float32), "fc.bias"))
    builder.op("Gemm", [x, "fc.weight", "fc.bias"], "logits", transB=1)
    graph = helper.make_graph(
        builder.nodes,
        "efficientnet_b0_random",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes])],
        initializer=builder.initializers,
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET)],
        ir_version=_IR_VERSION,
        producer_name="splitinf.tools.models.efficientnet",
        doc_string=f"EfficientNet-B0-like, random weights (seed {seed}); for benchmarks only",
    )
