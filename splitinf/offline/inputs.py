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

:func:`model_inputs` is the one place that decides which inputs a tool runs on: the user's samples
(``--samples``) when given, else random inputs at the user's shapes (``--shape NAME=1x3x320x448``),
else random inputs with every dynamic dimension 1, and a warning naming those past the first (the batch). Its
:class:`InputSet` records the shapes used (``to_json``), for profiles and plans.
:func:`run_failure` turns an onnxruntime failure on such inputs into the one-line InputError.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from splitinf.contract.samples import read_samples
from splitinf.contract.tensors import TensorSpec, shape_mismatches
from splitinf.errors import InputError
from splitinf.ort import numpy_dtype_name

__all__ = [
    "ORT_RUN_ERRORS",
    "IntegerRule",
    "InputSet",
    "describe_shapes",
    "inputs_for_plan",
    "model_inputs",
    "parse_shapes",
    "random_inputs",
    "recorded_shapes",
    "run_checked",
    "shape_mismatches",
    "run_failure",
    "session_input_specs",
]

log = logging.getLogger(__name__)
# What onnxruntime raises when a model cannot run on given inputs (its errors are not RuntimeErrors).
ORT_RUN_ERRORS: tuple[type[Exception], ...] = (
    _ort_state.Fail,
    _ort_state.InvalidArgument,
    _ort_state.RuntimeException,
    _ort_state.InvalidGraph,
    _ort_state.NotImplemented,
    _ort_state.NoSuchFile,
    RuntimeError,
)
InputSource = Literal["samples", "shapes", "random"]
_WARNED: set[tuple[str, int]] = set()

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


def _onnx_dtype_name(ort_type: str) -> str:
    """A type beyond those splitinf carries, as onnx maps it; else the type itself, which random_inputs names."""
    element = ort_type.removeprefix("tensor(").removesuffix(")").upper()
    try:
        return str(helper.tensor_dtype_to_np_dtype(TensorProto.DataType.Value(element)).name)
    except (KeyError, ValueError):
        return ort_type


def session_input_specs(session: Any) -> list[TensorSpec]:
    """The inputs of an onnxruntime session as specs (numpy dtype names; ``tensor(float)`` is float32)."""
    specs = []
    for arg in session.get_inputs():
        dtype = numpy_dtype_name(str(arg.type)) or _onnx_dtype_name(str(arg.type))
        specs.append(TensorSpec(arg.name, dtype, tuple(arg.shape)))
    return specs


# ----------------------------------------------------------------------------- the user's inputs


def parse_shapes(texts: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """``["x=1x3x320x448", "sr="]`` -> ``{"x": (1, 3, 320, 448), "sr": ()}`` (``NAME=`` is a scalar);
    InputError for anything else."""
    shapes: dict[str, tuple[int, ...]] = {}
    for text in texts:
        name, sep, dims = text.partition("=")
        name, dims = name.strip(), dims.strip()
        try:
            shape = tuple(int(d) for d in dims.lower().split("x")) if dims else ()
        except ValueError:
            shape = (-1,)
        if not sep or not name or any(d < 0 for d in shape):
            raise InputError(f"--shape {text!r} is not NAME=DIMS; write it like x=1x3x320x448 (NAME= for a scalar)")
        if name in shapes:
            raise InputError(f"--shape gives input {name!r} twice; give each input once")
        shapes[name] = shape
    return shapes


def _fixed_spec(spec: TensorSpec, shape: Sequence[int]) -> TensorSpec:
    """``spec`` at the user's ``shape``; InputError where the two disagree."""
    fits = len(shape) == len(spec.shape) and all(
        not isinstance(d, int) or d < 0 or d == given for d, given in zip(spec.shape, shape, strict=True)
    )
    if not fits:
        dims = "x".join(str(d) for d in shape) or "(scalar)"
        raise InputError(
            f"--shape {spec.name}={dims} does not fit the input {spec.name!r} of shape {list(spec.shape)}; "
            "give one size per dimension, the fixed ones as the model has them"
        )
    return TensorSpec(spec.name, spec.dtype, tuple(shape))


def _guessed_dims(spec: TensorSpec) -> list[int | str | None]:
    """The dynamic dimensions random inputs must guess: all but the first, which is the batch (by rule)."""
    return [d for d in spec.shape[1:] if not isinstance(d, int) or d < 0]


def describe_shapes(feeds: Mapping[str, np.ndarray]) -> str:
    """``x float32[1,3,320,448], sr int64[]``: how errors and warnings name inputs."""
    return ", ".join(f"{n} {np.asarray(v).dtype}[{','.join(str(d) for d in np.shape(v))}]" for n, v in feeds.items())


@dataclass(frozen=True)
class InputSet:
    """The input sets a tool runs a model on, and where they came from (``samples``, ``shapes``, ``random``)."""

    samples: tuple[dict[str, np.ndarray], ...]
    source: InputSource

    @property
    def first(self) -> dict[str, np.ndarray]:
        return self.samples[0]

    def shapes(self) -> dict[str, list[int]]:
        """The shape of each input in the first set (the shape bytes, FLOPs and timings are given at)."""
        return {name: list(np.shape(value)) for name, value in self.first.items()}

    def to_json(self) -> dict[str, Any]:
        """What profiles and plans record: ``{"source": ..., "inputs": {name: {"dtype", "shape"}}}``."""
        inputs = {n: {"dtype": np.asarray(v).dtype.name, "shape": list(np.shape(v))} for n, v in self.first.items()}
        return {"source": self.source, "inputs": inputs}


def model_inputs(
    specs: Sequence[TensorSpec],
    *,
    samples: str | os.PathLike[str] | Sequence[Mapping[str, np.ndarray]] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    count: int = 1,
    batch: int = 1,
    integers: IntegerRule = "zeros",
    seed: int = 0,
) -> InputSet:
    """The inputs to run a model with ``specs`` on: the ``samples`` (a path for
    :func:`~splitinf.contract.samples.read_samples`, or input sets) when given; else ``count`` random
    sets at ``shapes`` (an input with a dynamic dimension past the first needs one, or it counts as 1
    with a warning); ``batch`` and ``integers`` as for :func:`random_inputs`. InputError names what is wrong."""
    shapes = dict(shapes or {})
    names = [spec.name for spec in specs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise InputError(f"--shape names {unknown}, which the model does not take; its inputs are {names}")
    if samples is not None:
        sets = read_samples(samples, specs)[0] if isinstance(samples, (str, os.PathLike)) else list(samples)
        if not sets:
            raise InputError("the samples are empty; give at least one sample per model input")
        for name, shape in shapes.items():
            if list(np.shape(sets[0][name])) != list(shape):
                raise InputError(
                    f"--shape {name}={'x'.join(map(str, shape))} disagrees with the samples' "
                    f"{list(np.shape(sets[0][name]))}; drop --shape or give samples of that shape"
                )
        return InputSet(tuple(dict(s) for s in sets), "samples")
    fixed = [_fixed_spec(spec, shapes[spec.name]) if spec.name in shapes else spec for spec in specs]
    guessed = [spec for spec in fixed if _guessed_dims(spec)]
    listed = "; ".join(f"{spec.name} {list(spec.shape)}" for spec in guessed)
    if guessed and (listed, batch) not in _WARNED:
        _WARNED.add((listed, batch))  # once per process: split and verify draw twice
        log.warning(
            "random inputs with their dynamic dimensions 1 (batch %d) for %s: bytes, FLOPs and timings are "
            "at that size; give --shape NAME=DIMS or --samples FILE.npz for the real one",
            batch,
            listed,
        )
    rng = np.random.default_rng(seed)
    drawn = [random_inputs(fixed, rng, batch=batch, integers=integers) for _ in range(max(count, 1))]
    return InputSet(tuple(drawn), "shapes" if shapes else "random")


def run_failure(exc: BaseException, feeds: Mapping[str, np.ndarray], what: str = "the model") -> InputError:
    """The one-line InputError for an onnxruntime failure on ``feeds`` (raise it ``from exc``)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return InputError(
        f"onnxruntime failed to run {what} on inputs {describe_shapes(feeds)}: {first}; "
        "give real inputs with --samples FILE.npz or the right sizes with --shape NAME=DIMS"
    )


def run_checked(
    session: Any, feeds: Mapping[str, np.ndarray], what: str = "the model", names: Sequence[str] | None = None
) -> list[np.ndarray]:
    """``session.run(names, feeds)`` without onnxruntime's own error log lines; a failure is the
    one-line InputError of :func:`run_failure`."""
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # the InputError says it once
    try:
        return list(session.run(None if names is None else list(names), dict(feeds), quiet))
    except ORT_RUN_ERRORS as exc:
        raise run_failure(exc, feeds, what) from exc


def recorded_shapes(recorded: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The input shapes a profile or plan recorded (:meth:`InputSet.to_json`), as ``--shape`` gives them:
    a plan made without ``--shape``/``--samples`` times and sizes at the profile's shapes."""
    return {name: tuple(int(d) for d in entry["shape"]) for name, entry in dict(recorded.get("inputs", {})).items()}


def inputs_for_plan(
    specs: Sequence[TensorSpec],
    profiles: Sequence[Mapping[str, Any]],
    *,
    samples: str | os.PathLike[str] | Sequence[Mapping[str, np.ndarray]] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    count: int = 6,
    seed: int = 0,
) -> tuple[InputSet, list[str]]:
    """The inputs a plan is built on, and a warning line per input whose shape differs from the
    one a profile was measured at: the samples, else random sets at ``shapes``, else at the shapes
    the first profile recorded (so ``plan`` without ``--shape`` plans where the profiles timed)."""
    recorded = [dict(p.get("inputs") or {}) for p in profiles]
    if samples is None and not shapes:
        shapes = next((recorded_shapes(r) for r in recorded if r.get("inputs")), None)
    inputs = model_inputs(specs, samples=samples, shapes=shapes, count=count, seed=seed)
    warnings = list(dict.fromkeys(line for r in recorded for line in shape_mismatches(r, inputs.shapes())))
    return inputs, warnings
