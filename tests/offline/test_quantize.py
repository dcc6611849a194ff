"""int8 variants made by onnxruntime.quantization, run in real onnxruntime sessions against their fp32 originals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from splitinf.errors import PlanError
from splitinf.offline.codecs import compare_outputs, run_model
from splitinf.offline.graph import GraphView, enumerate_cuts, load_model
from splitinf.offline.partition import split_model
from splitinf.offline.quantize import (
    Int8Chain,
    has_weights,
    parse_quantize,
    quantize_method,
    quantize_model,
)
from splitinf.tools.models import digits_fallback_path, digits_main_path, load_digits_test


@pytest.fixture(scope="module")
def digits() -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    images, _ = load_digits_test()
    samples = [{"image": images[i : i + 1]} for i in range(len(images))]
    return samples[:100], samples[100:]


def _ops(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node}


def test_the_int8_digits_model_agrees_with_fp32_on_held_out_images(digits: tuple[list, list]) -> None:
    calibration, held_out = digits
    model = load_model(digits_main_path())
    before = model.SerializeToString()
    quantized = quantize_model(model, calibration)
    assert model.SerializeToString() == before, "quantizing must not touch the caller's model"
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(quantized.model)  # QDQ format, not a hand-made graph
    assert quantized.method == "static" and quantized.per_channel
    assert quantized.describe()["format"] == "QDQ" and quantized.describe()["calibration_samples"] == 100
    assert [i.name for i in quantized.model.graph.input] == ["image"]
    assert [o.name for o in quantized.model.graph.output] == ["logits"]
    assert [o.domain for o in quantized.model.opset_import] == [""]  # no stray domains from the optimiser
    onnx.checker.check_model(quantized.model)
    report = compare_outputs(run_model(model, held_out), run_model(quantized.model, held_out))
    assert report["top1_agreement"] >= 0.99
    assert report["mean_rel_error"] < 0.1
    assert quantized.model.ByteSize() < 0.5 * model.ByteSize()  # int8 weights


def _digits_chain(cut_names: list[str], calibration: list, held_out: list) -> tuple[Int8Chain, list]:
    model = load_model(digits_main_path())
    view = GraphView(model)
    cuts = [view.find(name) for name in cut_names]
    chain = Int8Chain(view, cuts, calibration, {"held_out": held_out}, method="static")
    return chain, cuts


def test_an_int8_chain_quantizes_each_segment_with_weights_and_keeps_the_rest_fp32(digits: tuple[list, list]) -> None:
    calibration, held_out = digits
    model = load_model(digits_main_path())
    names = [c.id for c in enumerate_cuts(model)]
    # conv, then a Relu alone (no weights), then the rest of the convolutions
    chain, cuts = _digits_chain([names[0], names[1], names[2], names[12]], calibration[:40], held_out)
    assert chain.head(names[0]) is None  # the input cut: nothing to quantize
    for cut in cuts[1:]:
        values = chain.head(cut.id)
        assert values is not None
        fp32 = run_model(split_model(model, cut).head, held_out)
        assert compare_outputs(fp32, values["held_out"])["mean_rel_error"] < 0.1
    result = chain.result()
    assert [s.end for s in result.segments] == [names[1], names[2], names[12]]
    assert [s.quantization is not None for s in result.segments] == [True, False, True]
    relu = onnx.load_from_string(result.segments[1].data)
    assert _ops(relu) == {"Relu"}  # the fp32 segment itself
    assert result.segments[0].quantization["calibration_samples"] == 40  # type: ignore[index]
    for segment in (result.segments[0], result.segments[2]):
        assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(onnx.load_from_string(segment.data))
    assert [len(s) for s in (result.up_to(names[1]), result.up_to(names[12]))] == [1, 3]


def test_an_int8_chain_walks_cuts_in_chain_order_only() -> None:
    images, _ = load_digits_test()
    samples = [{"image": images[i : i + 1]} for i in range(4)]
    names = [c.id for c in enumerate_cuts(load_model(digits_main_path()))]
    chain, _ = _digits_chain([names[1], names[12]], samples, samples)
    assert chain.head(names[12]) is not None
    with pytest.raises(PlanError, match="after a later cut"):
        chain.head(names[1])


def test_a_head_without_weights_has_nothing_to_quantize() -> None:
    model = load_model(digits_main_path())
    cuts = enumerate_cuts(model)
    assert not has_weights(split_model(model, cuts[0]).head) and has_weights(split_model(model, cuts[1]).head)


def _matmul_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), f"w{i}") for i in range(2)]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w1"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_matmul_heavy_models_get_dynamic_quantization_without_samples() -> None:
    model = _matmul_model()
    assert quantize_method(model) == "dynamic"
    quantized = quantize_model(model, [])
    assert quantized.method == "dynamic" and "DynamicQuantizeLinear" in _ops(quantized.model)
    rng = np.random.default_rng(1)
    samples = [{"x": rng.standard_normal((1, 8, 16)).astype(np.float32)} for _ in range(4)]
    report = compare_outputs(run_model(model, samples), run_model(quantized.model, samples))
    assert report["mean_rel_error"] < 0.05


def test_convolutional_and_gemm_models_are_quantized_statically() -> None:
    assert quantize_method(load_model(digits_main_path())) == "static"
    assert quantize_method(load_model(digits_fallback_path())) == "static"  # Gemm layers only


def test_static_quantization_needs_samples_and_bad_values_are_refused() -> None:
    with pytest.raises(PlanError, match="--samples"):
        quantize_model(load_model(digits_main_path()), [])
    with pytest.raises(PlanError, match="lack the input"):
        quantize_model(load_model(digits_main_path()), [{"x": np.zeros((1, 1, 8, 8), np.float32)}])
    assert parse_quantize(None) is None and parse_quantize("none") is None and parse_quantize("INT8") == "int8"
    with pytest.raises(PlanError, match="int8"):
        parse_quantize("int4")
