"""Small float32 ONNX models built with ``onnx.helper`` for tests and benchmarks.

Every builder returns a checked ``onnx.ModelProto`` (opset 17, IR version 8) with
random weights from a fixed seed, so two calls give the same model. Unless a builder
says otherwise the batch dimension is symbolic (``"N"``), the input is ``"x"`` and the
output is ``"y"``.

=========================  ==================  ==============  ======================================
builder                    inputs              outputs         what it exercises
=========================  ==================  ==============  ======================================
``chain_cnn()``            x [N,3,16,16]       y [N,10]        a plain chain: Conv, Relu, MaxPool, Gemm
``residual_cnn()``         x [N,3,16,16]       y [N,10]        ResNet-style blocks with skip Adds
``inception_block()``      x [N,8,12,12]       y [N,16,12,12]  four branches joined by Concat
``constant_weights_model`` x [N,6]             y [N,4]         weights from Constant / ConstantOfShape
                                                               and a Shape-derived Reshape target
``two_in_two_out()``       a [N,8], b [N,4]    y1 [N,6],       two inputs and outputs; b is needed
                                               y2 [N,4]        late, so it crosses most cuts
``if_model()``             x [N,4]             y [N,4]         an If whose branches read outer names
``mlp(batch=None)``        x [N,16]            y [N,4]         MatMul/Add/Relu layers (int batch ok)
``random_dag(seed)``       x0.. [N,C]          y0.. [N,C]      random DAG of elementwise/MatMul/Concat
``densenet_like(blocks)``  x [N,3,32,32]       y [N,10]        DenseNet-sized graph for benchmarks
``int8_identity()``        x int8 [2]          y int8 [2]      an integer tensor, fixed shape
``matmul_chain(n, size)``  x [size,size]       y [size,size]   n MatMuls: a slow model, known output
=========================  ==================  ==============  ======================================
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "refuses_zeros",
    "OPSET",
    "chain_cnn",
    "constant_weights_model",
    "densenet_like",
    "dynamic_cnn",
    "if_model",
    "inception_block",
    "int8_identity",
    "matmul_chain",
    "mlp",
    "random_dag",
    "residual_cnn",
    "two_in_two_out",
]

OPSET = 17
IR_VERSION = 8
FLOAT = TensorProto.FLOAT

Dim = int | str


class _Builder:
    """Collects nodes and initializers; names are unique and readable."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count: dict[str, int] = {}

    def name(self, prefix: str) -> str:
        n = self._count.get(prefix, 0)
        self._count[prefix] = n + 1
        return f"{prefix}{n}"

    def weight(self, prefix: str, shape: Sequence[int], scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        std = scale if scale is not None else (2.0 / max(fan_in, 1)) ** 0.5
        name = self.name(prefix)
        value = (self.rng.standard_normal(shape) * std).astype(np.float32)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def const(self, prefix: str, value: np.ndarray) -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(
        self, op_type: str, inputs: Sequence[str], n_out: int = 1, out: Sequence[str] | None = None, **attrs: Any
    ) -> list[str]:
        outputs = list(out) if out is not None else [self.name(op_type.lower() + "_") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=self.name(op_type + "_node"), **attrs))
        return outputs

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, out: str | None = None) -> str:
        w = self.weight("conv_w", [c_out, c_in, k, k])
        b = self.weight("conv_b", [c_out], scale=0.1)
        return self.op("Conv", [x, w, b], out=[out] if out else None, pads=[k // 2] * 4, kernel_shape=[k, k])[0]

    def model(
        self,
        inputs: Sequence[onnx.ValueInfoProto],
        outputs: Sequence[onnx.ValueInfoProto],
        graph_name: str,
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, list(inputs), list(outputs), self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="splitinf.tools.testing",
            ir_version=IR_VERSION,
        )
        model.doc_string = f"splitinf test model {graph_name}"
        helper.set_model_props(model, {"splitinf.test_model": graph_name})
        onnx.checker.check_model(model, full_check=True)
        return model


def _vi(name: str, shape: Sequence[Dim | None], elem_type: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(shape))


def chain_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv-Relu-Conv-Relu-MaxPool-Conv-Relu-GlobalAveragePool-Flatten-Gemm."""
    b = _Builder(seed)
    h = b.op("Relu", [b.conv("x", 3, 8)])[0]
    h = b.op("Relu", [b.conv(h, 8, 8)])[0]
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])[0]
    h = b.op("Relu", [b.conv(h, 8, 16)])[0]
    h = b.op("GlobalAveragePool", [h])[0]
    h = b.op("Flatten", [h], axis=1)[0]
    b.op("Gemm", [h, b.weight("fc_w", [10, 16]), b.weight("fc_b", [10], 0.1)], out=["y"], transB=1)
    return b.model([_vi("x", ["N", 3, 16, 16])], [_vi("y", ["N", 10])], "chain_cnn")


def residual_cnn(seed: int = 0, blocks: int = 2) -> onnx.ModelProto:
    """A stem conv, then ``blocks`` residual blocks ``relu(x + conv(relu(conv(x))))``, then a classifier."""
    b = _Builder(seed)
    h = b.op("Relu", [b.conv("x", 3, 8)])[0]
    for _ in range(blocks):
        inner = b.op("Relu", [b.conv(h, 8, 8)])[0]
        inner = b.conv(inner, 8, 8)
        h = b.op("Relu", b.op("Add", [h, inner]))[0]
    h = b.op("Flatten", b.op("GlobalAveragePool", [h]), axis=1)[0]
    b.op("Gemm", [h, b.weight("fc_w", [10, 8]), b.weight("fc_b", [10], 0.1)], out=["y"], transB=1)
    return b.model([_vi("x", ["N", 3, 16, 16])], [_vi("y", ["N", 10])], "residual_cnn")


def dynamic_cnn(opset: int | None = None) -> onnx.ModelProto:
    """residual_cnn with a dynamic image size (N, 3, H, W); ``opset`` declares it at an older opset
    (its ops are the same there), like models exported years ago."""
    model = residual_cnn()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, name in ((dims[2], "H"), (dims[3], "W")):
        dim.Clear()
        dim.dim_param = name
    if opset is not None:
        model.opset_import[0].version = opset
        model.ir_version = 4
    onnx.checker.check_model(model, full_check=True)
    return model


def inception_block(seed: int = 0) -> onnx.ModelProto:
    """Four branches (1x1, 1x1-3x3, 1x1-5x5, maxpool-1x1) joined by Concat, then a 1x1 conv."""
    b = _Builder(seed)
    x = b.op("Relu", [b.conv("x", 8, 8, k=1)])[0]
    br1 = b.op("Relu", [b.conv(x, 8, 4, k=1)])[0]
    br2 = b.op("Relu", [b.conv(b.op("Relu", [b.conv(x, 8, 4, k=1)])[0], 4, 4, k=3)])[0]
    br3 = b.op("Relu", [b.conv(b.op("Relu", [b.conv(x, 8, 2, k=1)])[0], 2, 4, k=5)])[0]
    pool = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])[0]
    br4 = b.op("Relu", [b.conv(pool, 8, 4, k=1)])[0]
    cat = b.op("Concat", [br1, br2, br3, br4], axis=1)[0]
    b.conv(cat, 16, 16, k=1, out="y")
    return b.model([_vi("x", ["N", 8, 12, 12])], [_vi("y", ["N", 16, 12, 12])], "inception_block")


def constant_weights_model(seed: int = 0, batch: int | None = None) -> onnx.ModelProto:
    """Weights computed inside the graph, plus a Reshape whose target comes from Shape(x).

    ``w1`` is ConstantOfShape(shape initializer) + Constant noise; ``w2`` is a Constant node
    reshaped by a constant shape; the Reshape target ``[batch, 2, 4]`` is built from Shape(h),
    a side tensor that depends on the input and so may cross a cut. With an int ``batch`` the
    shapes are static, so Shape(h) is a constant and never crosses.
    """
    b = _Builder(seed)
    w1_shape = b.const("w1_shape", np.array([6, 8], dtype=np.int64))
    ones = b.op("ConstantOfShape", [w1_shape], value=helper.make_tensor("v", FLOAT, [1], [0.25]))[0]
    noise = b.op(
        "Constant", [], value=numpy_helper.from_array(b.rng.standard_normal((6, 8)).astype(np.float32), "noise")
    )[0]
    w1 = b.op("Add", [ones, noise])[0]
    h = b.op("Relu", b.op("MatMul", ["x", w1]))[0]
    flat = b.op(
        "Constant", [], value=numpy_helper.from_array(b.rng.standard_normal(32).astype(np.float32) * 0.3, "flat")
    )[0]
    w2 = b.op("Reshape", [flat, b.const("w2_shape", np.array([8, 4], dtype=np.int64))])[0]
    batch_dim = b.op(
        "Slice", [b.op("Shape", [h])[0], b.const("s0", np.array([0], np.int64)), b.const("s1", np.array([1], np.int64))]
    )[0]
    target = b.op("Concat", [batch_dim, b.const("rest", np.array([2, 4], np.int64))], axis=0)[0]
    h3 = b.op("Reshape", [h, target])[0]
    h3 = b.op("Mul", [h3, b.const("scale", np.full((1, 1, 4), 0.5, np.float32))])[0]
    h = b.op("Flatten", [h3], axis=1)[0]
    b.op("MatMul", [h, w2], out=["y"])
    dim: Dim = "N" if batch is None else batch
    return b.model([_vi("x", [dim, 6])], [_vi("y", [dim, 4])], "constant_weights_model")


def two_in_two_out(seed: int = 0) -> onnx.ModelProto:
    """``h = relu(a @ W1)``; ``y1 = relu(h) @ W2 + b @ W3``; ``y2 = b * sigmoid(h @ W4)``."""
    b = _Builder(seed)
    h = b.op("Relu", b.op("MatMul", ["a", b.weight("w", [8, 12])]))[0]
    g = b.op("Relu", b.op("MatMul", [h, b.weight("w", [12, 12])]))[0]
    y1_left = b.op("MatMul", [g, b.weight("w", [12, 6])])[0]
    y1_right = b.op("MatMul", ["b", b.weight("w", [4, 6])])[0]
    b.op("Add", [y1_left, y1_right], out=["y1"])
    gate = b.op("Sigmoid", b.op("MatMul", [g, b.weight("w", [12, 4])]))[0]
    b.op("Mul", ["b", gate], out=["y2"])
    return b.model(
        [_vi("a", ["N", 8]), _vi("b", ["N", 4])], [_vi("y1", ["N", 6]), _vi("y2", ["N", 4])], "two_in_two_out"
    )


def if_model(seed: int = 0) -> onnx.ModelProto:
    """``h = relu(x @ W)``; ``y = If(sum(h) > 0, then: h * w_then + t, else: h - w_else)`` then ``Tanh``.

    Both branches read ``h`` and outer-graph initializers/constants by outer-scope name, so
    whichever side runs the If must have them.
    """
    b = _Builder(seed)
    h = b.op("Relu", b.op("MatMul", ["x", b.weight("w", [4, 4])]))[0]
    h2 = b.op("Sigmoid", [h])[0]
    cond = b.op("Greater", [b.op("ReduceSum", [h2], keepdims=0)[0], b.const("half", np.array(0.5, np.float32))])[0]
    w_then = b.weight("w_then", [4])
    t = b.op("Constant", [], value=numpy_helper.from_array(np.full(4, 0.125, np.float32), "t"))[0]
    w_else = b.weight("w_else", [4])
    then_graph = helper.make_graph(
        [
            helper.make_node("Mul", [h2, w_then], ["then_mul"]),
            helper.make_node("Add", ["then_mul", t], ["then_out"]),
        ],
        "then_branch",
        [],
        [_vi("then_out", ["N", 4])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Sub", [h2, w_else], ["else_out"])], "else_branch", [], [_vi("else_out", ["N", 4])]
    )
    branch = b.op("If", [cond], then_branch=then_graph, else_branch=else_graph)[0]
    b.op("Tanh", b.op("Add", [branch, h]), out=["y"])
    return b.model([_vi("x", ["N", 4])], [_vi("y", ["N", 4])], "if_model")


def mlp(batch: int | None = None, seed: int = 0, sizes: Sequence[int] = (16, 32, 32, 4)) -> onnx.ModelProto:
    """MatMul + Add + Relu layers ``sizes[0] -> ... -> sizes[-1]`` (no Relu on the last); batch "N" when None."""
    b = _Builder(seed)
    h = "x"
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        last = i == len(sizes) - 2
        h = b.op("MatMul", [h, b.weight("w", [n_in, n_out])])[0]
        h = b.op("Add", [h, b.weight("b", [n_out], scale=0.1)], out=["y"] if last else None)[0]
        if not last:
            h = b.op("Relu", [h])[0]
    dim: Dim = "N" if batch is None else batch
    return b.model([_vi("x", [dim, sizes[0]])], [_vi("y", [dim, sizes[-1]])], "mlp")


def random_dag(
    seed: int | random.Random = 0,
    *,
    n_nodes: int = 12,
    n_inputs: int = 2,
    n_outputs: int = 2,
    width: int = 4,
) -> onnx.ModelProto:
    """A random DAG over ``[N, width]`` float tensors: inputs ``x0..``, outputs ``y0..``.

    Each node takes one or two earlier tensors (inputs or node outputs, biased towards
    recent ones so the graph is deep, with long skips sometimes): Relu/Tanh/Sigmoid,
    MatMul by a weight, Add/Mul/Max, Concat+MatMul back to ``width``, or an Add of a
    constant subgraph (Constant node through Abs). Outputs are taken from the last
    tensors, and every node reaches an output (dead nodes are wired in by a final Sum).
    """
    rnd = seed if isinstance(seed, random.Random) else random.Random(seed)
    b = _Builder(rnd.randrange(2**31))
    tensors = [f"x{i}" for i in range(n_inputs)]
    produced: list[str] = []

    def pick() -> str:
        if rnd.random() < 0.7:
            return tensors[-1 - min(int(rnd.expovariate(0.7)), len(tensors) - 1)]
        return rnd.choice(tensors)

    for _ in range(n_nodes):
        kind = rnd.choice(["unary", "matmul", "binary", "concat", "const"])
        a = pick()
        if kind == "unary":
            out = b.op(rnd.choice(["Relu", "Tanh", "Sigmoid", "Neg"]), [a])[0]
        elif kind == "matmul":
            out = b.op("MatMul", [a, b.weight("w", [width, width])])[0]
        elif kind == "binary":
            out = b.op(rnd.choice(["Add", "Mul", "Max"]), [a, pick()])[0]
        elif kind == "concat":
            cat = b.op("Concat", [a, pick()], axis=1)[0]
            out = b.op("MatMul", [cat, b.weight("w", [2 * width, width])])[0]
        else:
            value = numpy_helper.from_array(b.rng.standard_normal(width).astype(np.float32), "c")
            c = b.op("Abs", b.op("Constant", [], value=value))[0]
            out = b.op("Add", [a, c])[0]
        tensors.append(out)
        produced.append(out)
    consumed = {i for node in b.nodes for i in node.input}
    n_outputs = max(1, min(n_outputs, len(produced)))
    output_sources = produced[-n_outputs:]
    dead = [t for t in produced if t not in consumed and t not in output_sources]
    dead += [x for x in tensors[:n_inputs] if x not in consumed]
    if dead:
        joined = b.op("Sum", [output_sources[0], *dead])[0]
        output_sources = [joined, *output_sources[1:]]
    for i, src in enumerate(output_sources):
        b.op("Identity", [src], out=[f"y{i}"])
    return b.model(
        [_vi(x, ["N", width]) for x in tensors[:n_inputs]],
        [_vi(f"y{i}", ["N", width]) for i in range(len(output_sources))],
        "random_dag",
    )


def densenet_like(blocks: int = 4, layers_per_block: int = 36, growth: int = 4, seed: int = 0) -> onnx.ModelProto:
    """A DenseNet-shaped graph: each layer is BN-Relu-Conv1x1-BN-Relu-Conv3x3 on the Concat of all
    earlier feature maps in its block; transitions halve the resolution. The default has 1,000+ nodes."""
    b = _Builder(seed)
    channels = 2 * growth
    h = b.conv("x", 3, channels)

    def bn_relu(t: str, c: int) -> str:
        scale = b.const("bn_s", (1.0 + 0.1 * b.rng.standard_normal(c)).astype(np.float32))
        bias = b.const("bn_b", (0.1 * b.rng.standard_normal(c)).astype(np.float32))
        mean = b.const("bn_m", (0.1 * b.rng.standard_normal(c)).astype(np.float32))
        var = b.const("bn_v", (1.0 + 0.1 * np.abs(b.rng.standard_normal(c))).astype(np.float32))
        return b.op("Relu", b.op("BatchNormalization", [t, scale, bias, mean, var]))[0]

    side = 32
    for block in range(blocks):
        features = [h]
        for _ in range(layers_per_block):
            cat = features[0] if len(features) == 1 else b.op("Concat", features, axis=1)[0]
            c_in = channels + growth * (len(features) - 1)
            inner = b.conv(bn_relu(cat, c_in), c_in, 2 * growth, k=1)
            features.append(b.conv(bn_relu(inner, 2 * growth), 2 * growth, growth, k=3))
        h = b.op("Concat", features, axis=1)[0]
        channels = channels + growth * layers_per_block
        if block < blocks - 1:
            h = b.conv(bn_relu(h, channels), channels, channels // 2, k=1)
            channels //= 2
            if side > 4:
                h = b.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2])[0]
                side //= 2
    h = b.op("Flatten", b.op("GlobalAveragePool", [bn_relu(h, channels)]), axis=1)[0]
    b.op("Gemm", [h, b.weight("fc_w", [10, channels]), b.weight("fc_b", [10], 0.1)], out=["y"], transB=1)
    return b.model([_vi("x", ["N", 3, 32, 32])], [_vi("y", ["N", 10])], "densenet_like")


def int8_identity() -> onnx.ModelProto:
    """y = x for an int8 tensor of fixed shape [2]: typed int contents and a fixed first dimension."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "int8_identity",
                              [_vi("x", [2], TensorProto.INT8)], [_vi("y", [2], TensorProto.INT8)])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def matmul_chain(matmuls: int, size: int = 512) -> onnx.ModelProto:
    """``matmuls`` chained products with the size x size identity matrix (so y == x): a model whose
    run time grows with ``matmuls`` (about 4 ms per product at 512 on one thread), for deadline tests."""
    weight = numpy_helper.from_array(np.eye(size, dtype=np.float32), "w")
    names = ["x", *(f"h{i}" for i in range(matmuls - 1)), "y"]
    nodes = [helper.make_node("MatMul", [a, "w"], [b]) for a, b in zip(names, names[1:], strict=False)]
    graph = helper.make_graph(nodes, "matmul_chain", [_vi("x", [size, size])], [_vi("y", [size, size])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def refuses_zeros() -> onnx.ModelProto:
    """``y = x + sum(range(0, 4, k))`` with ``x`` [N, 4] float and ``k`` a scalar int64: onnxruntime refuses
    a Range whose step is 0, so zeros cannot warm it up (as silero-vad refuses a zero sample rate)."""
    nodes = [
        helper.make_node("Range", ["zero", "four", "k"], ["r"]),
        helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["rf"], ["s"], keepdims=0),
        helper.make_node("Add", ["x", "s"], ["y"]),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("k", TensorProto.INT64, []),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]
    graph = helper.make_graph(nodes, "ranged", inputs, outputs)
    graph.initializer.extend(
        [helper.make_tensor("zero", TensorProto.INT64, [], [0]), helper.make_tensor("four", TensorProto.INT64, [], [4])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model
