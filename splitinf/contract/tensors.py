"""Tensor specs, and the one check of an array against a spec and the one byte count.

A spec's shape holds ints (fixed sizes) and symbolic dimensions (a name such as ``"N"``,
``None`` or a negative int): a symbolic dimension accepts any size. The device (its inputs,
the server's answers), the server (requests to a tail) and the offline tools all check
tensors with ``tensor_mismatch``, and count bytes with ``tensor_bytes``.

Profiles and plans record the input shapes they were measured at (``{"source": ..., "inputs":
{name: {"dtype", "shape"}}}``); :func:`shape_mismatches` says where other inputs differ, and
:class:`ShapeWatch` says it once per distinct mismatch, for the device.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np

from splitinf.errors import InputError, SplitinfError

__all__ = [
    "Dim",
    "ShapeWatch",
    "TensorSpec",
    "check_tensor",
    "check_tensors",
    "shape_mismatches",
    "shown_shape",
    "tensor_bytes",
    "tensor_mismatch",
]

Dim = int | str | None


def _is_fixed(dim: Dim) -> TypeGuard[int]:
    return isinstance(dim, int) and dim >= 0


def _dtype_or_none(name: str) -> np.dtype[Any] | None:
    try:
        return np.dtype(name)
    except TypeError:  # an ONNX type numpy lacks ("bfloat16", "float8e4m3fn", ...)
        return None


def tensor_bytes(dtype: str, shape: Sequence[Dim]) -> int:
    """Bytes of one sample: symbolic dimensions (the batch) count as 1, a zero-sized one makes it 0 bytes;
    0 for a dtype numpy does not know."""
    known = _dtype_or_none(dtype)
    if known is None:
        return 0
    return known.itemsize * math.prod(dim if _is_fixed(dim) else 1 for dim in shape)


def shown_shape(shape: Sequence[Dim]) -> list[int | str]:
    """The shape as messages show it: symbolic dimensions as ``"?"``."""
    return [dim if _is_fixed(dim) else "?" for dim in shape]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "float16", "int8", "uint8", "int64", "bool"
    shape: tuple[Dim, ...]
    # derived once, so the per-call check is a dtype compare and a few int compares
    _numpy_dtype: np.dtype[Any] | None = field(init=False, repr=False, compare=False)
    _fixed: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_numpy_dtype", _dtype_or_none(self.dtype))
        fixed = tuple((axis, int(dim)) for axis, dim in enumerate(self.shape) if _is_fixed(dim))
        object.__setattr__(self, "_fixed", fixed)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample (see ``tensor_bytes``)."""
        return tensor_bytes(self.dtype, self.shape)

    def zeros(self) -> np.ndarray:
        """An array of zeros fitting the spec (symbolic dimensions as 1)."""
        return np.zeros([dim if _is_fixed(dim) else 1 for dim in self.shape], dtype=self.dtype)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(name=str(data["name"]), dtype=str(data["dtype"]), shape=tuple(data["shape"]))


def tensor_mismatch(spec: TensorSpec, array: np.ndarray) -> str | None:
    """Why ``array`` does not fit ``spec`` (dtype, rank, fixed dimensions), or None when it fits."""
    if array.dtype != spec._numpy_dtype:
        return f"dtype {array.dtype.name} does not match the expected {spec.dtype}"
    shape = array.shape
    if len(shape) != len(spec.shape) or any(shape[axis] != size for axis, size in spec._fixed):
        return f"shape {list(shape)} does not match the expected {shown_shape(spec.shape)}"
    return None


def check_tensor(
    spec: TensorSpec,
    array: np.ndarray,
    error: type[SplitinfError] = InputError,
    *,
    what: str = "tensor",
    context: str = "",
) -> None:
    """Raise ``error`` naming the tensor, what came and what was expected, unless ``array`` fits ``spec``."""
    problem = tensor_mismatch(spec, array)
    if problem is not None:
        raise error(f"{context}{what} {spec.name!r}: {problem}")


def check_tensors(
    specs: Sequence[TensorSpec],
    arrays: Mapping[str, np.ndarray],
    error: type[SplitinfError] = InputError,
    *,
    what: str = "tensor",
    context: str = "",
) -> None:
    """Exactly the specs' tensors, each fitting its spec; otherwise ``error`` saying what is missing,
    unexpected or does not fit (``context`` leads the message, e.g. the model's name)."""
    if arrays.keys() != {spec.name for spec in specs}:
        wanted = [spec.name for spec in specs]
        missing = [name for name in wanted if name not in arrays]
        unexpected = sorted(set(arrays) - set(wanted))
        problems = [f"missing {what}(s) {missing}"] if missing else []
        problems += [f"unexpected {what}(s) {unexpected}"] if unexpected else []
        raise error(f"{context}{'; '.join(problems)}; expected exactly {wanted}")
    for spec in specs:
        check_tensor(spec, arrays[spec.name], error, what=what, context=context)


def shape_mismatches(recorded: Mapping[str, Any], shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """A line per input whose shape in ``shapes`` differs from the one a profile or plan recorded
    (``recorded``: ``{"inputs": {name: {"shape": [...]}}}``); empty when they agree or nothing was recorded."""
    lines = []
    for name, entry in dict(recorded.get("inputs", {})).items():
        if name in shapes and list(shapes[name]) != list(entry.get("shape", [])):
            lines.append(
                f"input {name!r} is {list(shapes[name])}, but the timings were measured at {entry.get('shape')}: "
                "expected latencies may be off; profile and plan at these shapes (--shape/--samples)"
            )
    return lines


class ShapeWatch:
    """The :func:`shape_mismatches` of inputs against ``recorded``, each distinct line once (thread-safe);
    inputs at shapes already seen cost a tuple and a set lookup."""

    def __init__(self, recorded: Mapping[str, Any]) -> None:
        self._recorded = dict(recorded)
        self._names = tuple(dict(self._recorded.get("inputs") or {}))
        self._seen_shapes: set[tuple[tuple[int, ...], ...]] = set()
        self._reported: set[str] = set()
        self._lock = threading.Lock()

    def new_mismatches(self, inputs: Mapping[str, np.ndarray]) -> list[str]:
        """The mismatch lines of ``inputs`` not returned before."""
        if not self._names:
            return []
        key = tuple(tuple(np.shape(inputs[n])) if n in inputs else () for n in self._names)
        with self._lock:
            if key in self._seen_shapes:
                return []
            self._seen_shapes.add(key)
            shapes = {n: np.shape(v) for n, v in inputs.items()}
            lines = [line for line in shape_mismatches(self._recorded, shapes) if line not in self._reported]
            self._reported.update(lines)
            return lines
