"""Graph analysis: loading, the DAG view, cut enumeration and lookup (splitinf.offline.graph)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from splitinf.contract.tensors import tensor_bytes
from splitinf.errors import CutError, ModelLoadError
from splitinf.offline.graph import GraphView, enumerate_cuts, find_cut, load_model
from splitinf.tools.testing import graphs as models


def _names(model: onnx.ModelProto) -> list[set[str]]:
    return [set(c.names) for c in enumerate_cuts(model)]


# ----------------------------------------------------------------------------- load_model


def test_load_model_reads_a_saved_model(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save_model(models.mlp(), str(path))
    assert load_model(path).graph.output[0].name == "y"


def test_load_model_reads_external_data(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save_model(models.chain_cnn(), str(path), save_as_external_data=True, size_threshold=0, location="ext.data")
    assert (tmp_path / "ext.data").stat().st_size > 0
    loaded = load_model(path)
    weights = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    originals = {t.name: numpy_helper.to_array(t) for t in models.chain_cnn().graph.initializer}
    assert weights.keys() == originals.keys()
    for name, value in originals.items():
        np.testing.assert_array_equal(weights[name], value)


def test_load_model_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope.onnx")


def test_load_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a file"):
        load_model(tmp_path)


def test_load_model_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n")
    with pytest.raises(ModelLoadError, match="not .*ONNX model"):
        load_model(path)


def test_load_model_truncated_protobuf(tmp_path: Path) -> None:
    path = tmp_path / "cut.onnx"
    path.write_bytes(models.chain_cnn().SerializeToString()[:500])
    with pytest.raises(ModelLoadError, match="ONNX model"):
        load_model(path)


def test_load_model_checker_failure(tmp_path: Path) -> None:
    model = models.mlp()
    model.graph.node[0].input[0] = "undefined_tensor"
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="fails onnx.checker"):
        load_model(path)


def test_load_model_missing_external_data(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save_model(models.mlp(), str(path), save_as_external_data=True, size_threshold=0, location="w.data")
    (tmp_path / "w.data").unlink()
    with pytest.raises(ModelLoadError):
        load_model(path)


# ----------------------------------------------------------------------------- enumeration


def test_chain_cuts_are_every_layer_boundary_in_order() -> None:
    cuts = enumerate_cuts(models.chain_cnn())
    assert [c.names for c in cuts] == [
        ("x",),
        ("conv_0",),
        ("relu_0",),
        ("conv_1",),
        ("relu_1",),
        ("maxpool_0",),
        ("conv_2",),
        ("relu_2",),
        ("globalaveragepool_0",),
        ("flatten_0",),
        ("y",),
    ]
    first, conv0 = cuts[0], cuts[1]
    assert first.head_nodes == 0 and first.head_flops == 0 and first.head_params == 0
    assert first.tensors[0].shape == ("N", 3, 16, 16) and first.tensors[0].dtype == "float32"
    assert first.bytes_per_sample == 3 * 16 * 16 * 4
    assert conv0.bytes_per_sample == 8 * 16 * 16 * 4
    assert conv0.head_flops == 2 * 8 * 16 * 16 * (3 * 3 * 3)  # one 3x3 conv, 3 -> 8 channels
    assert conv0.head_params == 8 * 3 * 3 * 3 + 8
    last = cuts[-1]
    assert last.head_nodes == last.total_nodes == 10
    assert last.head_flops == last.total_flops and last.head_params == last.total_params
    assert last.total_params == sum(int(np.prod(t.dims)) for t in models.chain_cnn().graph.initializer)


def test_cut_shares_grow_from_input_to_output() -> None:
    for build in (models.residual_cnn, models.inception_block, models.two_in_two_out, models.densenet_like):
        cuts = enumerate_cuts(build())
        assert [c.head_nodes for c in cuts] == sorted(c.head_nodes for c in cuts)
        assert [c.head_flops for c in cuts] == sorted(c.head_flops for c in cuts)
        assert len({c.id for c in cuts}) == len(cuts)
        assert len({frozenset(c.names) for c in cuts}) == len(cuts)


def test_residual_blocks_cut_at_the_adds_and_carry_the_skip_inside() -> None:
    cuts = _names(models.residual_cnn())
    assert {"add_0"} in cuts and {"add_1"} in cuts and {"relu_0"} in cuts
    inside_first_block = [c for c in cuts if c & {"conv_1", "relu_1", "conv_2"}]
    assert inside_first_block
    assert all("relu_0" in c for c in inside_first_block)  # the skip connection crosses with the branch


def test_inception_branches_cross_together_until_the_concat() -> None:
    cuts = _names(models.inception_block())
    assert {"concat_0"} in cuts
    branch_outputs = {"relu_1", "relu_3", "relu_5", "relu_6"}
    assert branch_outputs in cuts  # all four finished branches, before the Concat
    for cut in cuts:
        find_cut(models.inception_block(), sorted(cut))  # every enumerated set separates


def test_two_inputs_the_late_input_crosses_until_consumed() -> None:
    cuts = _names(models.two_in_two_out())
    assert cuts[0] == {"a", "b"}
    assert cuts[-1] == {"y1", "y2"}
    before_b_used = [c for c in cuts if "matmul_3" not in c and "y2" not in c and c != {"y1", "y2"}]
    assert all("b" in c for c in before_b_used)
    # y2 is a graph output computed early: it stays in every later cut
    after_y2 = cuts[next(i for i, c in enumerate(cuts) if "y2" in c) :]
    assert all("y2" in c for c in after_y2)


def test_constants_never_cross_and_shape_side_tensors_do() -> None:
    model = models.constant_weights_model()
    view = GraphView(model)
    constants = {o for i, n in enumerate(view.nodes) if not view.dynamic[i] for o in n.output}
    assert {"constantofshape_0", "constant_0", "add_0", "constant_1", "reshape_0"} <= constants
    cuts = _names(model)
    assert all(not (c & constants) for c in cuts)
    assert not any(c & {t.name for t in model.graph.initializer} for c in cuts)
    side = [c for c in cuts if "shape_0" in c or "concat_0" in c]
    assert side, "the Shape-derived Reshape target must be offered as a crossing tensor"
    assert {"relu_0", "shape_0"} in cuts


def test_if_node_is_atomic_and_its_outer_names_stay_on_its_side() -> None:
    model = models.if_model()
    view = GraphView(model)
    if_index = next(i for i, n in enumerate(view.nodes) if n.op_type == "If")
    assert "sigmoid_0" in view.node_inputs[if_index]  # read by the branches, not a direct input
    assert {"w_then0", "w_else0", "constant_0"} <= set(view.node_inputs[if_index])
    cuts = _names(model)
    inner = {"then_mul", "then_out", "else_out"}
    assert all(not (c & inner) for c in cuts)
    assert {"greater_0", "relu_0", "sigmoid_0"} in cuts  # before the If: the outer name crosses
    with pytest.raises(CutError, match="control-flow"):
        find_cut(model, ["then_mul"])


def test_dense_graph_has_a_cut_per_node() -> None:
    model = models.densenet_like(blocks=2, layers_per_block=6)
    cuts = enumerate_cuts(model)
    assert len(cuts) > len(model.graph.node) // 2
    assert cuts[0].names == ("x",) and cuts[-1].names == ("y",)


def test_unused_input_is_not_a_crossing_tensor() -> None:
    model = models.mlp()
    model.graph.input.append(helper.make_tensor_value_info("unused", TensorProto.FLOAT, ["N", 2]))
    assert enumerate_cuts(model)[0].names == ("x",)


# ----------------------------------------------------------------------------- find_cut


def test_find_cut_by_id_and_by_names_agree() -> None:
    model = models.two_in_two_out()
    for cut in enumerate_cuts(model):
        assert find_cut(model, cut.id) == cut
        by_names = find_cut(model, list(reversed(cut.names)))
        assert by_names.id == cut.id and set(by_names.names) == set(cut.names)
        assert by_names.bytes_per_sample == cut.bytes_per_sample and by_names.head_flops == cut.head_flops


def test_find_cut_accepts_comma_separated_names_not_enumerated() -> None:
    model = models.two_in_two_out()
    # a valid cut with recomputation: the tail runs matmul_1 again from relu_0
    cut = find_cut(model, "b,relu_0")
    assert set(cut.names) == {"b", "relu_0"}


def test_find_cut_unknown_id_lists_valid_ids() -> None:
    with pytest.raises(CutError, match=r"unknown cut id 'conv9'.*valid ids include x, conv_0"):
        find_cut(models.chain_cnn(), "conv9")


def test_find_cut_that_does_not_separate_names_output_and_input() -> None:
    with pytest.raises(CutError, match=r"do not separate.*output 'y[12]' still depends on input '[ab]'"):
        find_cut(models.two_in_two_out(), ["relu_1"])


def test_find_cut_rejects_constants_and_unknown_tensors() -> None:
    with pytest.raises(CutError, match="constant"):
        find_cut(models.constant_weights_model(), ["relu_0", "constantofshape_0"])
    with pytest.raises(CutError, match="no tensor 'ghost'"):
        find_cut(models.mlp(), ["ghost"])
    with pytest.raises(CutError, match="empty"):
        find_cut(models.mlp(), [])


def test_long_cut_ids_are_short_digests_and_stable() -> None:
    model = models.inception_block()
    ids = [c.id for c in enumerate_cuts(model)]
    assert ids == [c.id for c in enumerate_cuts(models.inception_block())]
    assert all(len(i) <= 64 for i in ids)


def test_tensor_bytes_counts_symbolic_dims_as_one_and_zero_dims_as_zero() -> None:
    assert tensor_bytes("float32", ("N", 3, None, 4)) == 48
    assert tensor_bytes("float16", (2, 3)) == 12
    assert tensor_bytes("float32", ("N", 0, 4)) == 0
    assert tensor_bytes("int8", ()) == 1
