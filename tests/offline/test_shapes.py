"""Shapes from the user (issue 13): --shape parsing, which inputs a tool runs on, bytes and FLOPs at
those shapes, tensors recovered from a run where static inference loses them, why a region has no
cut, and the codecs that apply."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from splitinf.cli import main
from splitinf.contract.tensors import TensorSpec
from splitinf.errors import CutError, InputError
from splitinf.offline.codecs import applicable_codecs, encode, for_codec
from splitinf.offline.graph import GraphView, find_cut
from splitinf.offline.inputs import (
    inputs_for_plan,
    model_inputs,
    parse_shapes,
    recorded_shapes,
    run_checked,
    shape_mismatches,
)
from splitinf.offline.partition import split_model, verify_partition
from splitinf.offline.profiling import profile_model
from splitinf.offline.sessions import make_session
from splitinf.tools.testing import graphs

SPECS = [TensorSpec("x", "float32", ("N", 3, "H", "W")), TensorSpec("ids", "int64", ("N", "T"))]


def ms_gelu_model() -> onnx.ModelProto:
    """x -> MatMul -> com.microsoft Gelu -> MatMul -> Relu -> y: static inference cannot type what
    follows the Gelu (an onnxruntime-fused graph, in small)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Gelu", ["h"], ["g"], domain="com.microsoft", name="gelu"),
        helper.make_node("MatMul", ["g", "w2"], ["m"], name="mm2"),
        helper.make_node("Relu", ["m"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "fused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 4])],
        [w1, w2],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def opset9_cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    g = numpy_helper.from_array((rng.standard_normal((64, 5)) * 0.1).astype(np.float32), "g")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "g"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "op9",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [w, g],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=4)


# ----------------------------------------------------------------------------- the user's inputs


def test_parse_shapes_reads_dims_and_scalars_and_names_a_bad_one() -> None:
    assert parse_shapes(["x=1x3x320x448", "sr="]) == {"x": (1, 3, 320, 448), "sr": ()}
    for bad in (["x"], ["x=1xa"], ["=1x2"], ["x=1", "x=2"], ["x=-1x2"]):
        with pytest.raises(InputError, match="--shape"):
            parse_shapes(bad)


def test_shapes_fix_the_dynamic_dims_and_must_fit_the_fixed_ones() -> None:
    inputs = model_inputs(SPECS, shapes={"x": (1, 3, 32, 48), "ids": (1, 7)})
    assert inputs.source == "shapes" and inputs.shapes() == {"x": [1, 3, 32, 48], "ids": [1, 7]}
    assert inputs.to_json()["inputs"]["ids"] == {"dtype": "int64", "shape": [1, 7]}
    with pytest.raises(InputError, match=r"does not fit the input 'x'"):
        model_inputs(SPECS, shapes={"x": (1, 4, 32, 48)})
    with pytest.raises(InputError, match=r"names \['y'\]"):
        model_inputs(SPECS, shapes={"y": (1,)})


def test_random_inputs_warn_naming_the_dynamic_dims_past_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    specs = [*SPECS, TensorSpec("batch_only", "float32", ("N", 4))]
    with caplog.at_level(logging.WARNING, "splitinf.offline.inputs"):
        inputs = model_inputs(specs, shapes={"x": (1, 3, 8, 8)}, batch=3)
        model_inputs(specs, shapes={"x": (1, 3, 8, 8)}, batch=3)
    assert inputs.shapes()["ids"] == [3, 1] and inputs.shapes()["batch_only"] == [3, 4]
    assert caplog.text.count("ids ['N', 'T']") == 1 and "--shape" in caplog.text  # once per process
    assert "x [" not in caplog.text and "batch_only" not in caplog.text


def test_samples_win_over_random_and_must_agree_with_shapes(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    np.savez(path, x=np.ones((2, 1, 3, 4, 4), np.float32), ids=np.ones((2, 1, 5), np.int64))
    inputs = model_inputs(SPECS, samples=path)
    assert inputs.source == "samples" and len(inputs.samples) == 2 and inputs.shapes()["ids"] == [1, 5]
    assert model_inputs(SPECS, samples=path, shapes={"ids": (1, 5)}).source == "samples"
    with pytest.raises(InputError, match="disagrees with the samples"):
        model_inputs(SPECS, samples=path, shapes={"ids": (1, 6)})


def test_shapes_other_than_the_recorded_ones_are_named() -> None:
    recorded = model_inputs(SPECS, shapes={"x": (1, 3, 32, 48), "ids": (1, 7)}).to_json()
    assert shape_mismatches(recorded, {"x": (1, 3, 32, 48), "ids": [1, 7]}) == []
    (line,) = shape_mismatches(recorded, {"x": (1, 3, 64, 48), "ids": [1, 7]})
    assert "'x' is [1, 3, 64, 48]" in line and "[1, 3, 32, 48]" in line
    assert shape_mismatches({}, {"x": (1,)}) == []
    assert recorded_shapes(recorded) == {"x": (1, 3, 32, 48), "ids": (1, 7)}


def test_a_plan_runs_at_the_profiles_shapes_unless_told_and_warns_where_they_differ() -> None:
    profile = {"inputs": model_inputs(SPECS, shapes={"x": (1, 3, 32, 48), "ids": (1, 7)}).to_json()}
    inputs, warnings = inputs_for_plan(SPECS, [profile, profile])
    assert inputs.shapes() == {"x": [1, 3, 32, 48], "ids": [1, 7]} and len(inputs.samples) == 6 and warnings == []
    inputs, warnings = inputs_for_plan(SPECS, [profile, {}], shapes={"x": (1, 3, 64, 48), "ids": (1, 7)})
    assert inputs.shapes()["x"] == [1, 3, 64, 48] and len(warnings) == 1 and "'x'" in warnings[0]


def test_an_onnxruntime_failure_is_one_line_naming_the_input_shapes() -> None:
    session = make_session(graphs.mlp())
    with pytest.raises(InputError) as caught:
        run_checked(session, {"x": np.ones((1, 15), np.float32)})
    message = str(caught.value)
    assert "\n" not in message and "x float32[1,15]" in message and "--samples" in message


# ----------------------------------------------------------------------------- the graph at the user's shapes


def test_bytes_and_flops_are_counted_at_the_feeds_shapes() -> None:
    model = graphs.mlp()
    static, fed = GraphView(model), GraphView(model, {"x": np.ones((8, 16), np.float32)})
    assert fed.cuts()[0].bytes_per_sample == 8 * static.cuts()[0].bytes_per_sample
    assert fed.total_flops == 8 * static.total_flops > 0


def test_a_run_recovers_what_static_inference_cannot_type() -> None:
    model = ms_gelu_model()
    static = GraphView(model)
    assert [c.id for c in static.cuts()] == ["x", "h", "y"]
    reasons = static.uncuttable()
    assert len(reasons) == 2 and "tensor 'g' (from Gelu node 'gelu')" in reasons[0] and "--samples" in reasons[0]
    with pytest.raises(CutError, match="no known type"):
        find_cut(model, "g")

    fed = GraphView(model, {"x": np.ones((1, 5, 8), np.float32)})
    cuts = {c.id: c for c in fed.cuts()}
    assert list(cuts) == ["x", "h", "g", "m", "y"] and fed.uncuttable() == []
    assert cuts["g"].bytes_per_sample == 5 * 16 * 4 and cuts["g"].tensors[0].shape == (None, None, None)
    assert fed.total_flops == 2 * 5 * 8 * 16 + 2 * 5 * 16 * 4  # the second MatMul is counted too
    part = split_model(model, cuts["m"])
    report = verify_partition(model, part, samples=[{"x": np.ones((2, 3, 8), np.float32)}])
    assert report.samples == 1  # the recovered cut takes other sizes than the run's


def test_a_failed_recovery_run_is_the_reason_given() -> None:
    fed = GraphView(ms_gelu_model(), {"x": np.ones((1, 5, 7), np.float32)})
    assert "onnxruntime failed to run the model on inputs x float32[1,5,7]" in fed.uncuttable()[0]


def test_control_flow_is_named_as_uncuttable() -> None:
    reasons = GraphView(graphs.if_model()).uncuttable()
    assert any("If node" in r and "control flow is atomic" in r for r in reasons)


def test_cuts_command_at_the_users_shape_with_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fused.onnx"
    onnx.save(ms_gelu_model(), path)
    assert main(["cuts", str(path), "--shape", "x=1x5x8"]) == 0
    out = capsys.readouterr().out
    assert "5 cuts of" in out and "at x=1x5x8 (shapes)" in out
    samples = tmp_path / "s.npz"
    np.savez(samples, x=np.ones((1, 1, 5, 7), np.float32))  # the wrong inner size: the run fails
    assert main(["cuts", str(path), "--samples", str(samples)]) == 0
    captured = capsys.readouterr()
    assert "3 cuts of" in captured.out and captured.err.count("no cut: ") == 2


def test_split_verify_uses_only_the_samples_and_refuses_bad_ones_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fused.onnx"
    onnx.save(ms_gelu_model(), path)
    samples = tmp_path / "s.npz"
    np.savez(samples, x=np.ones((3, 1, 5, 8), np.float32))
    assert main(["split", str(path), "--cut", "g", "-o", str(tmp_path / "o"), "--samples", str(samples)]) == 0
    assert "verified on 3 input sets" in capsys.readouterr().out
    np.savez(samples, x=np.ones((3, 1, 5, 7), np.float32))
    argv = ["split", str(path), "--cut", "h", "-o", str(tmp_path / "o2"), "--samples", str(samples)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'x'" in err and "[1, 5, 7]" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- codecs that apply


def test_no_codec_on_a_cut_of_integers() -> None:
    float_cut = GraphView(graphs.mlp()).cuts()[0]
    assert applicable_codecs(float_cut, ("fp32", "fp16", "int8")) == (("fp32", "fp16", "int8"), None)
    int_cut = dataclasses.replace(float_cut, tensors=(TensorSpec("ids", "int64", ("N", 8)),))
    codecs, note = applicable_codecs(int_cut, ("fp32", "fp16", "int8"))
    assert codecs == ("fp32",) and note is not None and "fp16/int8" in note and "int64" in note


def test_int8_on_an_opset9_model_is_converted_and_checked() -> None:
    model = opset9_cnn()
    cut = GraphView(model).find("r")
    part = split_model(model, cut)
    sample = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    ready, note = for_codec(part, "int8", sample)
    assert note is None and ready is not None and ready.head.opset_import[0].version == 10
    encoded = encode(
        ready, "int8", {"r": __import__("splitinf.offline.codecs", fromlist=["QuantParams"]).QuantParams(0.1, 0)}
    )
    assert encoded.wire[0].dtype == "int8"
    assert for_codec(part, "fp16", sample) == (part, None)  # opset 9 has Cast
    skipped, why = for_codec(part, "int8", None)
    assert skipped is None and why is not None and "opset >= 10" in why


def test_profile_records_the_inputs_and_times_only_codecs_that_apply() -> None:
    model = opset9_cnn()
    inputs = model_inputs(GraphView(model).input_specs(), shapes={"x": (1, 3, 8, 8)})
    profile = profile_model(
        model, name="op9", sha256="0", codecs=("fp32", "int8"), repeats=1, warmup=0, passes=1, inputs=inputs,
        cut_ids=["x", "r"],
    )  # fmt: skip
    assert profile["inputs"] == {"source": "shapes", "inputs": {"x": {"dtype": "float32", "shape": [1, 3, 8, 8]}}}
    assert all(set(c["codecs"]) == {"fp32", "int8"} for c in profile["cuts"])
    assert profile["cuts"][0]["bytes"] == 3 * 8 * 8 * 4 and profile["notes"] == []


def test_cuts_of_a_model_without_random_values_fall_back_to_static_shapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["t"]), helper.make_node("Identity", ["t"], ["y"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N", "T"])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["N", "T"])],
    )
    path = tmp_path / "strings.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["cuts", str(path)]) == 0
    assert "3 cuts of" in capsys.readouterr().out
    assert main(["cuts", str(path), "--shape", "text=1x4"]) == 2
    assert "give sample inputs" in capsys.readouterr().err


def test_a_readable_cut_id_is_found_at_any_shapes() -> None:
    model = graphs.two_in_two_out()
    cut = GraphView(model).find("b+relu_1")  # "+"-joined names, as `cuts` at other shapes may list it
    assert set(cut.names) == {"b", "relu_1"} and cut.id == "b+relu_1"
    with pytest.raises(CutError, match="give the same --shape/--samples"):
        GraphView(model).find("b+nothing")
