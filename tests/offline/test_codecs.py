"""Wire codecs: Cast / QuantizeLinear surgery on real head/tail pairs, run with onnxruntime."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from splitinf.errors import PlanError
from splitinf.offline import codecs
from splitinf.offline.graph import enumerate_cuts, find_cut
from splitinf.offline.partition import Partition, split_model
from splitinf.tools.testing import graphs as models


def _partition(model: onnx.ModelProto, tensors: str | Sequence[str]) -> Partition:
    return split_model(model, find_cut(model, tensors))


def _samples(n: int, shape: tuple[int, ...] = (1, 3, 16, 16), seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


@pytest.fixture(scope="module")
def chain() -> onnx.ModelProto:
    return models.chain_cnn()


def test_fp32_is_the_partition_unchanged(chain: onnx.ModelProto) -> None:
    partition = _partition(chain, "relu_1")
    encoded = codecs.encode(partition, "fp32")
    assert encoded.head is partition.head and encoded.tail is partition.tail
    assert encoded.wire == partition.cut.tensors
    assert encoded.bytes_per_sample == 8 * 16 * 16 * 4


def test_fp16_casts_at_the_end_of_the_head_and_back_at_the_start_of_the_tail(chain: onnx.ModelProto) -> None:
    partition = _partition(chain, "relu_1")
    encoded = codecs.encode(partition, "fp16")
    onnx.checker.check_model(encoded.head, full_check=True)
    onnx.checker.check_model(encoded.tail, full_check=True)
    last, first = encoded.head.graph.node[-1], encoded.tail.graph.node[0]
    assert (last.op_type, helper.get_attribute_value(last.attribute[0])) == ("Cast", TensorProto.FLOAT16)
    assert (first.op_type, helper.get_attribute_value(first.attribute[0])) == ("Cast", TensorProto.FLOAT)
    assert [t.name for t in encoded.wire] == ["relu_1__fp16"]
    assert [o.name for o in encoded.head.graph.output] == ["relu_1__fp16"]
    assert [i.name for i in encoded.tail.graph.input] == ["relu_1__fp16"]
    assert encoded.head.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert encoded.bytes_per_sample == 8 * 16 * 16 * 2
    # the original partition is untouched (encode is pure)
    assert [o.name for o in partition.head.graph.output] == ["relu_1"]
    report = codecs.fidelity(chain, encoded, _samples(6), _samples(3, seed=1))
    assert report["bytes_per_sample"] == 8 * 16 * 16 * 2
    assert report["calibration"]["max_rel_error"] < 1e-2
    assert report["held_out"]["top1_agreement"] == 1.0


@pytest.mark.parametrize(
    ("codec", "dtype", "zero_range"), [("int8", np.int8, (-128, 127)), ("uint8", np.uint8, (0, 255))]
)
def test_8bit_quantizes_with_calibrated_scales_shared_by_both_sides(
    chain: onnx.ModelProto, codec: str, dtype: type, zero_range: tuple[int, int]
) -> None:
    partition = _partition(chain, "relu_1")
    quant = codecs.calibrate(partition, _samples(8), codec)
    assert set(quant) == {"relu_1"}
    params = quant["relu_1"]
    assert params.scale > 0 and zero_range[0] <= params.zero_point <= zero_range[1]
    # relu output: min 0, so zero sits at the bottom of the range
    assert params.zero_point == zero_range[0]
    encoded = codecs.encode(partition, codec, quant)
    onnx.checker.check_model(encoded.head, full_check=True)
    onnx.checker.check_model(encoded.tail, full_check=True)
    assert encoded.head.graph.node[-1].op_type == "QuantizeLinear"
    assert encoded.tail.graph.node[0].op_type == "DequantizeLinear"
    scale_name = encoded.head.graph.node[-1].input[1]
    head_inits = {i.name: onnx.numpy_helper.to_array(i) for i in encoded.head.graph.initializer}
    tail_inits = {i.name: onnx.numpy_helper.to_array(i) for i in encoded.tail.graph.initializer}
    assert head_inits[scale_name] == tail_inits[scale_name] == np.float32(params.scale)
    assert encoded.wire[0].dtype == np.dtype(dtype).name
    report = codecs.fidelity(chain, encoded, _samples(8), _samples(8, seed=1))
    assert report["bytes_per_sample"] == 8 * 16 * 16
    assert report["held_out"]["top1_agreement"] >= 0.85
    assert 0 < report["calibration"]["mean_rel_error"] < 0.05


def test_scale_follows_the_observed_range(chain: onnx.ModelProto) -> None:
    partition = _partition(chain, "relu_1")
    small = codecs.calibrate(partition, _samples(4), "uint8")["relu_1"]
    large = codecs.calibrate(partition, [{"x": s["x"] * 10} for s in _samples(4)], "uint8")["relu_1"]
    assert large.scale > 5 * small.scale


def _float_and_int_crossing() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["r", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("codec", ["fp16", "int8"])
def test_only_float_crossing_tensors_are_converted(codec: str) -> None:
    model = _float_and_int_crossing()
    partition = _partition(model, ["r", "s"])
    samples = [{"x": np.linspace(-1, 1, 6, dtype=np.float32).reshape(1, 6)}]
    quant = codecs.calibrate(partition, samples, codec) if codec == "int8" else None
    encoded = codecs.encode(partition, codec, quant)
    wire = {t.name: t.dtype for t in encoded.wire}
    assert wire == {f"r__{codec}": "float16" if codec == "fp16" else "int8", "s": "int64"}
    outputs, wire_bytes = codecs.run_encoded(encoded, samples)
    assert wire_bytes == 6 * (2 if codec == "fp16" else 1) + 2 * 8
    np.testing.assert_allclose(outputs[0]["y"], np.maximum(samples[0]["x"], 0), atol=0.01)


def test_wire_names_avoid_names_already_in_the_graph() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Neg", ["r"], ["r__fp16"]),
        helper.make_node("Add", ["r", "r__fp16"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "clash",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    encoded = codecs.encode(_partition(model, "r"), "fp16")
    assert encoded.wire[0].name not in {"r", "r__fp16"}
    outputs, _ = codecs.run_encoded(encoded, [{"x": np.ones((1, 4), np.float32)}])
    np.testing.assert_allclose(outputs[0]["y"], np.zeros((1, 4)))


def test_the_input_cut_takes_codecs_too(chain: onnx.ModelProto) -> None:
    input_cut = enumerate_cuts(chain)[0]
    assert [t.name for t in input_cut.tensors] == ["x"]
    partition = split_model(chain, input_cut)
    quant = codecs.calibrate(partition, _samples(6), "int8")
    encoded = codecs.encode(partition, "int8", quant)
    assert encoded.bytes_per_sample == 3 * 16 * 16
    report = codecs.fidelity(chain, encoded, _samples(6), _samples(6, seed=2))
    assert report["held_out"]["top1_agreement"] >= 0.8


def test_an_empty_calibration_set_is_refused(chain: onnx.ModelProto) -> None:
    partition = _partition(chain, "relu_1")
    with pytest.raises(PlanError, match="calibration set is empty"):
        codecs.calibrate(partition, [], "int8")
    with pytest.raises(PlanError, match="calibration set is empty"):
        codecs.fidelity(chain, codecs.encode(partition, "fp16"), [])


def test_8bit_without_calibration_is_refused(chain: onnx.ModelProto) -> None:
    with pytest.raises(PlanError, match="calibrate"):
        codecs.encode(_partition(chain, "relu_1"), "int8")


def test_parse_codecs_names_the_choices() -> None:
    assert codecs.parse_codecs("fp32, fp16,fp32") == ("fp32", "fp16")
    with pytest.raises(PlanError, match="fp32, fp16, int8, uint8"):
        codecs.parse_codecs("fp32,bf16")


def test_compare_outputs_counts_top1_for_classifiers_and_relative_error_otherwise() -> None:
    ref = [{"logits": np.array([[1.0, 2.0, 0.0]]), "v": np.array([2.0])}, {"logits": np.array([[3.0, 0.0, 1.0]])}]
    cand = [{"logits": np.array([[1.0, 2.5, 0.0]]), "v": np.array([2.2])}, {"logits": np.array([[0.0, 4.0, 1.0]])}]
    report = codecs.compare_outputs(ref, cand)
    assert report["top1_agreement"] == 0.5
    assert report["max_rel_error"] == pytest.approx(4.0 / 3.0)
    regression = codecs.compare_outputs([{"v": np.array([2.0, 4.0])}], [{"v": np.array([2.0, 5.0])}])
    assert regression["top1_agreement"] is None
    assert regression["max_rel_error"] == pytest.approx(0.25)
    assert regression["mean_rel_error"] == pytest.approx(0.5 / 3.0)


def test_label_accuracy_checks_the_label_count() -> None:
    outputs = [{"y": np.array([[0.1, 0.9]])}, {"y": np.array([[0.8, 0.2]])}]
    assert codecs.label_accuracy(outputs, np.array([1, 1])) == 0.5
    with pytest.raises(PlanError, match="labels"):
        codecs.label_accuracy(outputs, np.array([1, 1, 0]))


def test_a_zero_sized_dimension_is_zero_bytes_for_the_cut_and_for_every_codec() -> None:
    # graph.py once counted a zero-sized dimension as 0 bytes and codecs.py as 1: one count now
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 0, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 0, 4])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "empty", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    partition = _partition(model, "x")
    assert partition.cut.bytes_per_sample == 0
    for codec in ("fp32", "fp16"):
        assert codecs.encode(partition, codec).bytes_per_sample == 0
