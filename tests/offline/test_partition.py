"""Head/tail export and verification (splitinf.offline.partition), checked with onnxruntime outputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.compose
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from splitinf.contract.files import sha256_file
from splitinf.errors import CutError, InputError, OutputError, VerificationError
from splitinf.offline import partition
from splitinf.offline.graph import enumerate_cuts, find_cut
from splitinf.offline.partition import (
    export_partition,
    split_model,
    verify_partition,
    write_to_repository,
)
from splitinf.tools.testing import graphs as models

BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "chain_cnn": models.chain_cnn,
    "residual_cnn": models.residual_cnn,
    "inception_block": models.inception_block,
    "constant_weights_model": models.constant_weights_model,
    "two_in_two_out": models.two_in_two_out,
    "if_model": models.if_model,
    "mlp": models.mlp,
}


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    return dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in wanted}), strict=True))


def _feeds(model: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value if d.HasField("dim_value") else 3 for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


# ----------------------------------------------------------------------------- every cut of every model


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_cut_splits_checks_and_matches_the_full_model(name: str) -> None:
    model = BUILDERS[name]()
    feeds = _feeds(model)
    expected = _run(model, feeds)
    for cut in enumerate_cuts(model):
        part = split_model(model, cut)
        onnx.checker.check_model(part.head, full_check=True)
        onnx.checker.check_model(part.tail, full_check=True)
        assert [o.name for o in part.head.graph.output] == list(cut.names)
        assert [i.name for i in part.tail.graph.input] == list(cut.names)
        assert [i.name for i in part.head.graph.input] == [i.name for i in model.graph.input]
        assert [o.name for o in part.tail.graph.output] == [o.name for o in model.graph.output]
        assert part.head.opset_import == model.opset_import and part.tail.ir_version == model.ir_version
        assert {p.key: p.value for p in part.tail.metadata_props}["splitinf.test_model"] == name
        crossing = _run(part.head, feeds)
        got = _run(part.tail, crossing)
        for output, want in expected.items():
            np.testing.assert_allclose(got[output], want, rtol=1e-6, atol=1e-6, err_msg=f"{name} at {cut.id}")
        report = verify_partition(model, part, n_random=1)
        assert report.max_rel_error <= partition.REL_TOLERANCE and report.samples == 1


@pytest.mark.parametrize("name", ["residual_cnn", "inception_block", "two_in_two_out", "constant_weights_model"])
def test_merged_head_and_tail_equal_the_original(name: str) -> None:
    model = BUILDERS[name]()
    feeds = _feeds(model, seed=7)
    expected = _run(model, feeds)
    outputs = {o.name for o in model.graph.output}
    # merge_models cannot express a tail that passes an input straight through to an output
    cuts = [c for c in enumerate_cuts(model) if not set(c.names) & outputs]
    assert len(cuts) >= 5
    for cut in cuts:
        part = split_model(model, cut)
        # constants are duplicated on both sides, so prefix the tail's names before merging
        tail = onnx.compose.add_prefix(part.tail, "t/")
        merged = onnx.compose.merge_models(part.head, tail, io_map=[(n, f"t/{n}") for n in cut.names])
        got = _run(merged, feeds)
        for output, want in expected.items():
            np.testing.assert_array_equal(got[f"t/{output}"], want)


# ----------------------------------------------------------------------------- constants and control flow


def _shared_constant_model() -> onnx.ModelProto:
    """y = relu(x @ W) @ W with W = ConstantOfShape(shape) + Constant: both sides of a mid cut need W."""
    noise = np.random.default_rng(3).standard_normal((4, 4)).astype(np.float32)
    nodes = [
        helper.make_node("ConstantOfShape", ["w_shape"], ["w_ones"], value=helper.make_tensor("v", 1, [1], [0.5])),
        helper.make_node("Constant", [], ["w_noise"], value=numpy_helper.from_array(noise, "n")),
        helper.make_node("Add", ["w_ones", "w_noise"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.array([4, 4], np.int64), "w_shape")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_constant_subgraph_is_duplicated_when_both_sides_need_it() -> None:
    model = _shared_constant_model()
    cut = find_cut(model, "r")
    part = split_model(model, cut)
    for side in (part.head, part.tail):
        assert {"ConstantOfShape", "Constant", "Add"} <= set(_op_types(side))
        assert [t.name for t in side.graph.initializer] == ["w_shape"]
    assert cut.names == ("r",)  # the weight never crosses
    assert verify_partition(model, part).max_abs_error == 0.0


def test_constants_go_only_to_the_side_that_needs_them() -> None:
    model = models.constant_weights_model()
    part = split_model(model, find_cut(model, "relu_0"))
    assert "ConstantOfShape" in _op_types(part.head) and "ConstantOfShape" not in _op_types(part.tail)
    assert "w2_shape0" in {t.name for t in part.tail.graph.initializer}
    assert "w1_shape0" not in {t.name for t in part.tail.graph.initializer}
    verify_partition(model, part)


def test_shape_of_a_static_tensor_is_a_constant_on_each_side() -> None:
    model = models.constant_weights_model(batch=3)
    cuts = enumerate_cuts(model)
    assert all(not {"shape_0", "slice_0", "concat_0"} & set(c.names) for c in cuts)
    assert any(c.names == ("relu_0",) for c in cuts)
    for cut in cuts:
        part = split_model(model, cut)
        assert "Shape" not in _op_types(part.head) + _op_types(part.tail)
        onnx.checker.check_model(part.tail, full_check=True)
        verify_partition(model, part, n_random=1)
    # with a symbolic batch the same Shape depends on the input and crosses instead
    assert any("shape_0" in c.names for c in enumerate_cuts(models.constant_weights_model()))


def test_if_tail_carries_the_outer_names_its_branches_read() -> None:
    model = models.if_model()
    cut = find_cut(model, ["greater_0", "relu_0", "sigmoid_0"])
    part = split_model(model, cut)
    assert "If" in _op_types(part.tail) and "If" not in _op_types(part.head)
    assert {"w_then0", "w_else0"} <= {t.name for t in part.tail.graph.initializer}
    assert "Constant" in _op_types(part.tail)  # the branch reads the Constant node's output by outer name
    report = verify_partition(model, part, n_random=8)
    assert report.samples == 8 and report.max_abs_error == 0.0


def _loop_model() -> onnx.ModelProto:
    """h = relu(x); a Loop runs 3 times: acc = acc * 0.5 + h (h read by outer-scope name); y = acc."""
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["acc_in", "half"], ["scaled"]),
            helper.make_node("Add", ["scaled", "h"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["N", 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["N", 4]),
        ],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["h"]),
        helper.make_node("Neg", ["x"], ["start"]),
        helper.make_node("Loop", ["trips", "keep_going", "start"], ["acc"], body=body),
        helper.make_node("Tanh", ["acc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "loop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [
            numpy_helper.from_array(np.array(3, np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "keep_going"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_loop_is_atomic_and_gets_its_outer_scope_tensor() -> None:
    model = _loop_model()
    cuts = [set(c.names) for c in enumerate_cuts(model)]
    assert {"h", "start"} in cuts  # h is read only inside the body, yet it crosses with the Loop's input
    for cut in enumerate_cuts(model):
        part = split_model(model, cut)
        onnx.checker.check_model(part.tail, full_check=True)
        if "Loop" in _op_types(part.tail):
            assert "half" in {t.name for t in part.tail.graph.initializer}
        verify_partition(model, part)
    with pytest.raises(CutError, match="control-flow"):
        find_cut(model, ["scaled"])
    with pytest.raises(CutError, match="no known type and shape"):
        find_cut(model, ["acc"])  # shape inference leaves the Loop's output without a rank


def test_constant_graph_outputs_are_made_by_the_tail() -> None:
    model = models.mlp()
    model.graph.node.append(
        helper.make_node("Constant", [], ["version"], value=numpy_helper.from_array(np.array([3], np.int64)))
    )
    model.graph.output.append(helper.make_tensor_value_info("version", TensorProto.INT64, [1]))
    model.graph.output.append(helper.make_tensor_value_info("b0", TensorProto.FLOAT, [32]))
    onnx.checker.check_model(model, full_check=True)
    for cut in enumerate_cuts(model):
        assert "version" not in cut.names and "b0" not in cut.names
        part = split_model(model, cut)
        assert "b0" in {t.name for t in part.tail.graph.initializer}
        verify_partition(model, part, n_random=1)


def test_an_input_that_is_also_an_output_crosses_every_cut() -> None:
    model = models.mlp()
    model.graph.output.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]))
    cuts = enumerate_cuts(model)
    assert all("x" in c.names for c in cuts)
    for cut in cuts:
        verify_partition(model, split_model(model, cut), n_random=1)


def test_a_random_node_runs_on_one_side_only() -> None:
    nodes = [
        helper.make_node("RandomNormal", [], ["noise"], shape=[1, 4], seed=1.0),
        helper.make_node("Add", ["x", "noise"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Mul", ["r", "noise"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "noisy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    cuts = [set(c.names) for c in enumerate_cuts(model)]
    assert {"r", "noise"} in cuts  # the drawn numbers cross instead of being drawn twice
    with pytest.raises(CutError, match="RandomNormal node .* would run on both sides"):
        split_model(model, find_cut(model, ["r", "x"]))


# ----------------------------------------------------------------------------- verification


def test_verify_catches_a_wrong_tail() -> None:
    model = models.mlp()
    part = split_model(model, find_cut(model, "relu_0"))
    weight = part.tail.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, weight.name))
    with pytest.raises(VerificationError, match="differs from the full model at cut 'relu_0'"):
        verify_partition(model, part)


def test_verify_on_user_samples_and_rejects_misnamed_ones() -> None:
    model = models.two_in_two_out()
    part = split_model(model, enumerate_cuts(model)[3])
    samples = [{"a": np.ones((5, 8), np.float32), "b": np.full((5, 4), -2.0, np.float32)}]
    report = verify_partition(model, part, samples=samples, n_random=0)
    assert report.samples == 1 and report.max_abs_error == 0.0
    with pytest.raises(InputError, match=r"missing sample input\(s\) \['b'\]; unexpected sample input\(s\) \['c'\]"):
        verify_partition(model, part, samples=[{"a": samples[0]["a"], "c": samples[0]["b"]}])
    with pytest.raises(InputError, match="float64"):
        verify_partition(model, part, samples=[{"a": np.ones((1, 8)), "b": np.ones((1, 4), np.float32)}])


# ----------------------------------------------------------------------------- export


def test_export_writes_parts_and_manifest(tmp_path: Path) -> None:
    source = tmp_path / "res.onnx"
    onnx.save_model(models.residual_cnn(), str(source))
    out = tmp_path / "out"
    manifest = export_partition(source, "add_0", out, verify=True)
    assert sorted(p.name for p in out.iterdir()) == ["head.onnx", "manifest.json", "tail.onnx"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["format"] == 1 and manifest["codec"] == "fp32"
    assert manifest["source"] == {"name": "res.onnx", "sha256": sha256_file(source)}
    assert manifest["cut"] == {
        "id": "add_0",
        "tensors": [{"name": "add_0", "dtype": "float32", "shape": ["N", 8, 16, 16]}],
        "bytes": 8192,
    }
    assert manifest["opset"] == [{"domain": "", "version": 17}] and manifest["ir_version"] == 8
    for side in ("head", "tail"):
        assert manifest["parts"][side] == {"file": f"{side}.onnx", "sha256": sha256_file(out / f"{side}.onnx")}
        onnx.checker.check_model(str(out / f"{side}.onnx"), full_check=True)
    assert manifest["verify"]["max_rel_error"] <= partition.REL_TOLERANCE
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_export_replaces_its_own_output_but_not_foreign_files(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    onnx.save_model(models.mlp(), str(source))
    out = tmp_path / "out"
    export_partition(source, "relu_0", out)
    second = export_partition(source, "relu_1", out)
    assert json.loads((out / "manifest.json").read_text())["cut"]["id"] == second["cut"]["id"] == "relu_1"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="did not write"):
        export_partition(source, "relu_0", foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_failed_export_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "m.onnx"
    onnx.save_model(models.mlp(), str(source))
    real_save = partition.save_model

    def failing_save(model: onnx.ModelProto, path: Path) -> str:
        if path.name == "tail.onnx":
            raise OSError(28, "No space left on device")
        return real_save(model, path)

    monkeypatch.setattr(partition, "save_model", failing_save)
    with pytest.raises(OutputError, match="No space left"):
        export_partition(source, "relu_0", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_export_of_an_external_data_model(tmp_path: Path) -> None:
    source = tmp_path / "ext.onnx"
    onnx.save_model(models.inception_block(), str(source), save_as_external_data=True, size_threshold=0)
    manifest = export_partition(source, "concat_0", tmp_path / "out", verify=True)
    assert manifest["verify"]["samples"] == 4
    head = onnx.load_model(str(tmp_path / "out" / "head.onnx"))
    assert all(t.data_location == TensorProto.DEFAULT for t in head.graph.initializer)


def test_parts_over_the_protobuf_limit_are_saved_with_external_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the 2 GiB path, exercised by lowering the limit rather than allocating 2 GiB
    monkeypatch.setattr(partition, "PROTOBUF_LIMIT", 2048)
    source = tmp_path / "cnn.onnx"
    onnx.save_model(models.chain_cnn(), str(source))
    out = tmp_path / "out"
    manifest = export_partition(source, "relu_1", out, verify=True)
    assert (out / "head.onnx.data").is_file() and (out / "tail.onnx.data").is_file()
    assert manifest["parts"]["head"]["sha256"] == sha256_file(out / "head.onnx")
    assert manifest["parts"]["tail"]["data"] == {
        "file": "tail.onnx.data",
        "sha256": sha256_file(out / "tail.onnx.data"),
    }
    model = models.chain_cnn()
    feeds = _feeds(model)
    head = ort.InferenceSession(str(out / "head.onnx"), providers=["CPUExecutionProvider"])
    tail = ort.InferenceSession(str(out / "tail.onnx"), providers=["CPUExecutionProvider"])
    (crossing,) = head.run(None, feeds)
    np.testing.assert_allclose(tail.run(None, {"relu_1": crossing})[0], _run(model, feeds)["y"], rtol=1e-5)


def test_write_to_repository_layout_and_manifest(tmp_path: Path) -> None:
    model = models.mlp()
    part = split_model(model, find_cut(model, "relu_0"))
    manifest = {"format": 1, "cut": {"id": "relu_0"}, "parts": {"tail": {"file": "tail.onnx", "sha256": "x"}}}
    path = write_to_repository(part.tail, tmp_path / "repo", "mlp_tail", manifest=manifest)
    assert path == tmp_path / "repo" / "mlp_tail" / "1" / "model.onnx"
    written = json.loads((path.parent / "manifest.json").read_text())
    assert written["parts"]["tail"] == {"file": "model.onnx", "sha256": sha256_file(path)}
    assert manifest["parts"]["tail"]["sha256"] == "x"  # the caller's dict is not changed
    assert onnx.load_model(str(path)).graph.input[0].name == "relu_0"
    write_to_repository(part.tail, tmp_path / "repo", "mlp_tail", version="2")
    assert (tmp_path / "repo" / "mlp_tail" / "2" / "model.onnx").is_file()
    with pytest.raises(OutputError, match="plain directory name"):
        write_to_repository(part.tail, tmp_path / "repo", "../escape")


# ----------------------------------------------------------------------------- property: random DAGs


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    n_nodes=st.integers(2, 20),
    n_inputs=st.integers(1, 3),
    n_outputs=st.integers(1, 3),
)
def test_every_cut_of_a_random_dag_exports_and_verifies(seed: int, n_nodes: int, n_inputs: int, n_outputs: int) -> None:
    model = models.random_dag(seed, n_nodes=n_nodes, n_inputs=n_inputs, n_outputs=n_outputs)
    cuts = enumerate_cuts(model)
    assert set(cuts[0].names) <= {i.name for i in model.graph.input}
    assert set(cuts[-1].names) == {o.name for o in model.graph.output}
    for cut in cuts:
        part = split_model(model, cut)
        onnx.checker.check_model(part.head, full_check=True)
        onnx.checker.check_model(part.tail, full_check=True)
        verify_partition(model, part, n_random=1, seed=seed % 1000)
