"""Random inputs for a model: the one generator behind verification, profiling and the planner.

Where no sample inputs are given, splitinf makes some of the right dtype and shape. Two rules
depend on what the inputs are for, so the caller states them:

- ``batch``: the size of a symbolic (or unknown) first dimension; every other symbolic dimension
  is 1. Verification uses 2, so a head or tail that mixes up the batch axis fails the check;
  timing uses 1, the batch the device sends.
- ``integers``: ``"zeros"`` fills integer and bool inputs with zeros, valid wherever an integer is
  an index or a token id (what timing needs: the time does not depend on the value);
  ``"small"`` draws integers from {0, 1, 2} and bools at random, so an equivalence check sees
  varied values that are still small enough for most index inputs.

Float inputs are standard normal. Other dtypes (strings, complex) are an InputError: give samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
from onnx import TensorProto, helper

from splitinf.contract.tensors import TensorSpec
from splitinf.errors import InputError

__all__ = ["IntegerRule", "random_inputs", "session_input_specs"]

IntegerRule = Literal["zeros", "small"]


def _concrete_shape(shape: Sequence[int | str | None], batch: int) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else (batch if i == 0 else 1) for i, d in enumerate(shape)]


def random_inputs(
    specs: Iterable[TensorSpec],
    seed: int | np.random.Generator = 0,
    *,
    batch: int = 1,
    integers: IntegerRule = "zeros",
) -> dict[str, np.ndarray]:
    """One input set for ``specs``, keyed by name (see the module docstring for ``batch`` and ``integers``).

    ``seed`` is a seed or a generator to draw from (consecutive calls on one generator differ).
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = _concrete_shape(spec.shape, batch)
        try:
            dtype = np.dtype(spec.dtype)
        except TypeError:
            dtype = np.dtype("V")
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iub" and integers == "zeros":
            feeds[spec.name] = np.zeros(shape, dtype=dtype)
        elif dtype.kind in "iub":
            feeds[spec.name] = rng.integers(0, 2 if dtype.kind == "b" else 3, size=shape).astype(dtype)
        else:
            raise InputError(
                f"input {spec.name!r} has dtype {spec.dtype}, for which splitinf makes no random values; "
                "give sample inputs for it"
            )
    return feeds


def session_input_specs(session: Any) -> list[TensorSpec]:
    """The inputs of an onnxruntime session as specs (numpy dtype names; ``tensor(float)`` is float32)."""
    specs = []
    for arg in session.get_inputs():
        element = str(arg.type).removeprefix("tensor(").removesuffix(")").upper()
        try:
            dtype = helper.tensor_dtype_to_np_dtype(TensorProto.DataType.Value(element)).name
        except (KeyError, ValueError):
            dtype = str(arg.type)  # not a numpy type: random_inputs names it
        specs.append(TensorSpec(arg.name, dtype, tuple(arg.shape)))
    return specs
