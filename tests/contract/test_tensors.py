"""The one tensor check and the one byte count, which the device, the server and the planner share."""

from __future__ import annotations

import numpy as np
import pytest

from splitinf.contract.tensors import TensorSpec, check_tensor, check_tensors, tensor_bytes, tensor_mismatch
from splitinf.errors import InputError, InvalidRequestError

SPEC = TensorSpec("x", "float32", ("N", 16))


def test_symbolic_dimensions_take_any_size_fixed_ones_only_theirs() -> None:
    for rows in (0, 1, 5):
        assert tensor_mismatch(SPEC, np.zeros((rows, 16), np.float32)) is None
    assert tensor_mismatch(TensorSpec("x", "float32", (None, -1, 3)), np.zeros((2, 7, 3), np.float32)) is None
    assert tensor_mismatch(SPEC, np.zeros((5, 15), np.float32)) == (
        "shape [5, 15] does not match the expected ['?', 16]"
    )


def test_dtype_and_rank_must_match() -> None:
    assert tensor_mismatch(SPEC, np.zeros((5, 16))) == "dtype float64 does not match the expected float32"
    assert tensor_mismatch(SPEC, np.zeros((16,), np.float32)) == "shape [16] does not match the expected ['?', 16]"
    assert tensor_mismatch(SPEC, np.zeros((1, 1, 16), np.float32)) is not None


def test_check_tensor_raises_the_callers_error_naming_the_tensor() -> None:
    check_tensor(SPEC, np.zeros((2, 16), np.float32))
    with pytest.raises(InvalidRequestError, match=r"^tensor 'x': dtype float64 does not match the expected float32$"):
        check_tensor(SPEC, np.zeros((2, 16)), InvalidRequestError)
    with pytest.raises(InputError, match=r"^input 'x': shape \[2, 15\]"):
        check_tensor(SPEC, np.zeros((2, 15), np.float32), what="input")


def test_check_tensors_wants_exactly_the_specs_names() -> None:
    other = TensorSpec("m", "bool", ())
    good = {"x": np.zeros((1, 16), np.float32), "m": np.array(True)}
    check_tensors((SPEC, other), good)
    with pytest.raises(
        InvalidRequestError, match=r"^model 'a': missing input\(s\) \['m'\]; unexpected input\(s\) \['z'\]; "
    ):
        check_tensors(
            (SPEC, other), {"x": good["x"], "z": good["m"]}, InvalidRequestError, what="input", context="model 'a': "
        )
    with pytest.raises(InputError, match=r"^tensor 'm': shape \[1\] does not match the expected \[\]$"):
        check_tensors((SPEC, other), {"x": good["x"], "m": np.array([True])})


def test_bytes_count_symbolic_dimensions_as_one_and_a_zero_sized_one_as_nothing() -> None:
    assert tensor_bytes("float32", ("N", 16)) == 64 == SPEC.sample_bytes
    assert tensor_bytes("float16", (2, 3)) == 12
    assert tensor_bytes("float32", (0, 16)) == 0
    assert TensorSpec("x", "uint8", ("N", 0)).sample_bytes == 0
    assert tensor_bytes("int64", ()) == 8
    assert tensor_bytes("float8e4m3fn", (4,)) == 0  # an ONNX type numpy lacks: unknown size, not a crash


def test_zeros_fit_the_spec_and_json_round_trips() -> None:
    zeros = TensorSpec("x", "int8", ("N", 3, None)).zeros()
    assert zeros.shape == (1, 3, 1) and zeros.dtype == np.int8
    assert tensor_mismatch(TensorSpec("x", "int8", ("N", 3, None)), zeros) is None
    assert TensorSpec.from_json(SPEC.to_json()) == SPEC
    assert SPEC.to_json() == {"name": "x", "dtype": "float32", "shape": ["N", 16]}


RECORDED = {"source": "shapes", "inputs": {"x": {"dtype": "float32", "shape": [1, 3, 32, 48]}, "n": {"shape": []}}}


def test_shape_mismatches_name_each_input_at_another_shape() -> None:
    from splitinf.contract.tensors import shape_mismatches

    assert shape_mismatches(RECORDED, {"x": (1, 3, 32, 48), "n": ()}) == []
    (line,) = shape_mismatches(RECORDED, {"x": (1, 3, 64, 48), "n": ()})
    assert "'x' is [1, 3, 64, 48]" in line and "[1, 3, 32, 48]" in line and "--shape" in line
    assert shape_mismatches({}, {"x": (1,)}) == []


def test_shape_watch_reports_each_mismatch_once() -> None:
    from splitinf.contract.tensors import ShapeWatch

    watch = ShapeWatch(RECORDED)
    at = {"x": np.zeros((1, 3, 32, 48), np.float32), "n": np.array(3)}
    other = {"x": np.zeros((1, 3, 64, 48), np.float32), "n": np.array(3)}
    assert watch.new_mismatches(at) == []
    assert len(watch.new_mismatches(other)) == 1
    assert watch.new_mismatches(other) == [] and watch.new_mismatches(at) == []
    third = {"x": np.zeros((2, 3, 64, 48), np.float32), "n": np.array(3)}
    assert len(watch.new_mismatches(third)) == 1  # another shape is another line
    assert ShapeWatch({}).new_mismatches(other) == []  # a plan that recorded none checks nothing
