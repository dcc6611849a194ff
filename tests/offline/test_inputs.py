"""Random inputs (splitinf.offline.inputs): the batch and integer rules, and specs from a real session."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from splitinf.contract.tensors import TensorSpec
from splitinf.errors import InputError
from splitinf.offline.inputs import random_inputs, session_input_specs
from splitinf.ort import open_session

SPECS = (
    TensorSpec("x", "float16", ("N", 3, "T")),
    TensorSpec("ids", "int64", (None, 64)),
    TensorSpec("mask", "bool", ("N", 64)),
    TensorSpec("empty", "float32", ("N", 0)),
)


def test_a_symbolic_first_dim_is_the_batch_and_other_symbolic_dims_are_one() -> None:
    shapes = {k: v.shape for k, v in random_inputs(SPECS, 0, batch=2).items()}
    assert shapes == {"x": (2, 3, 1), "ids": (2, 64), "mask": (2, 64), "empty": (2, 0)}
    assert {k: v.shape[0] for k, v in random_inputs(SPECS, 0).items()} == dict.fromkeys(shapes, 1)


def test_integers_are_zeros_or_small_random_values_by_the_rule() -> None:
    zeros = random_inputs(SPECS, 0, integers="zeros")
    assert zeros["ids"].dtype == np.int64 and not zeros["ids"].any() and not zeros["mask"].any()
    small = random_inputs(SPECS, 0, integers="small")
    assert set(np.unique(small["ids"]).tolist()) == {0, 1, 2}
    assert small["mask"].dtype == np.bool_ and set(np.unique(small["mask"]).tolist()) == {False, True}
    assert zeros["x"].dtype == np.float16 and zeros["x"].std() > 0


def test_a_seed_repeats_and_a_generator_moves_on() -> None:
    np.testing.assert_array_equal(random_inputs(SPECS, 7)["x"], random_inputs(SPECS, 7)["x"])
    rng = np.random.default_rng(7)
    first, second = random_inputs(SPECS, rng), random_inputs(SPECS, rng)
    assert not np.array_equal(first["x"], second["x"])


def test_a_dtype_without_random_values_is_named() -> None:
    with pytest.raises(InputError, match=r"'text' has dtype object.*give sample inputs"):
        random_inputs([TensorSpec("text", "object", (1,))])


def test_session_input_specs_are_numpy_named() -> None:
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4]),
    ]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT), helper.make_node("Add", ["x", "f"], ["y"])],
        "g",
        inputs,
        [output],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = open_session(model.SerializeToString())
    specs = session_input_specs(session)
    assert specs == [TensorSpec("x", "float32", ("N", 4)), TensorSpec("ids", "int64", ("N", 4))]
    feeds = random_inputs(specs, 0)
    (y,) = session.run(None, feeds)
    assert y.shape == (1, 4)
