"""Sample inputs from files: the one reader for verification, calibration and held-out sets.

``PATH`` is an ``.npz`` file, or a directory of ``.npz`` files and/or ``INPUT.npy`` files (the
``.npy`` files together count as one more file, each array named by its file's stem). Nothing is
unpickled. Each file holds an array per model input, named by the input:

- an array of the input's rank holds samples along its first (batch) axis, read in slices of the
  model's batch (the input's fixed first dimension, or 1 where it is symbolic);
- an array of one rank more holds samples stacked on a new first axis, one per entry.

Arrays are cast to the input's dtype where numpy's same-kind rule allows (float64 to float32);
otherwise, and for anything else that does not fit, an InputError names the file, the input and
the fix. An optional ``labels`` array holds one label per sample (in every file, or in none);
other arrays are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from splitinf.contract.tensors import TensorSpec
from splitinf.errors import InputError

__all__ = ["LABELS", "read_npz", "read_samples"]

LABELS = "labels"

Sample = dict[str, np.ndarray]


def read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, never unpickled; an InputError names the file and the fix.

    A single ``.npy`` array names no model input, so it is refused with that reason rather than
    guessed at.
    """
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read samples from {path}: {exc}; give an .npz of arrays named by input") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputError(
            f"{path} holds one array (.npy), not an .npz; save the inputs with numpy.savez(file, INPUT=array, ...)"
        )
    with loaded as data:
        return {name: data[name] for name in data.files}


def _read_npy(files: Sequence[Path]) -> dict[str, np.ndarray]:
    arrays = {}
    for file in files:
        try:
            arrays[file.stem] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read sample {file}: {exc}; give .npy files of plain arrays") from exc
    return arrays


def _read_files(source: Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(what to call it in errors, its arrays) for each file (or the directory's .npy files)."""
    if source.is_file():
        return [(str(source), read_npz(source))]
    if not source.is_dir():
        raise InputError(f"samples {source} do not exist; give an .npz file or a directory of .npy/.npz files")
    files = [(str(f), read_npz(f)) for f in sorted(source.glob("*.npz"))]
    npy = sorted(source.glob("*.npy"))
    if npy:
        files.append((f"the .npy files in {source}", _read_npy(npy)))
    if not files:
        raise InputError(f"{source} holds no .npy or .npz files; name them after the model's inputs")
    return files


def _entries(array: np.ndarray, spec: TensorSpec, what: str) -> list[np.ndarray]:
    """One input's samples in one file, each with the input's rank and dtype."""
    dtype = np.dtype(spec.dtype)
    if not np.can_cast(array.dtype, dtype, "same_kind"):
        raise InputError(f"{what}: {spec.name!r} is {array.dtype}, the model input is {dtype}; store it as {dtype}")
    array = array.astype(dtype, copy=False)
    rank = len(spec.shape)
    if array.ndim == rank + 1:
        # np.array, not np.ascontiguousarray: that one makes a scalar input's 0-d entries 1-d
        return [np.array(a, order="C") for a in array]
    first = spec.shape[0] if rank else None
    batch = first if isinstance(first, int) and first > 0 else 1
    if array.ndim != rank or rank == 0 or array.shape[0] % batch:
        raise InputError(
            f"{what}: {spec.name!r} has shape {list(array.shape)}, the input is {list(spec.shape)}; "
            f"give samples along the first axis (a multiple of {batch}) or stacked on a new first axis"
        )
    return [np.ascontiguousarray(array[i : i + batch]) for i in range(0, array.shape[0], batch)]


def _samples_in(arrays: dict[str, np.ndarray], inputs: Sequence[TensorSpec], what: str) -> list[Sample]:
    names = [spec.name for spec in inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        unknown = sorted(set(arrays) - set(names) - {LABELS})
        raise InputError(
            f"{what} must hold an array per model input {names}: missing {missing}, unknown {unknown}; "
            "name the arrays after the inputs"
        )
    entries = {spec.name: _entries(arrays[spec.name], spec, what) for spec in inputs}
    counts = {name: len(values) for name, values in entries.items()}
    if len(set(counts.values())) > 1:
        raise InputError(f"{what}: the inputs hold different numbers of samples: {counts}")
    n = next(iter(counts.values()), 0)
    return [{name: entries[name][i] for name in names} for i in range(n)]


def read_samples(path: str | os.PathLike[str], inputs: Sequence[TensorSpec]) -> tuple[list[Sample], np.ndarray | None]:
    """The sample input sets at ``path`` for a model with ``inputs``, and their labels (None when the
    files hold none); see the module docstring for the layout. InputError names what is wrong."""
    samples: list[Sample] = []
    labels: list[np.ndarray] = []
    files = _read_files(Path(path))
    for what, arrays in files:
        found = _samples_in(arrays, inputs, what)
        if LABELS in arrays:
            file_labels = arrays[LABELS].reshape(-1)
            if file_labels.size != len(found):
                raise InputError(
                    f"{what}: {LABELS!r} has {file_labels.size} entries for {len(found)} samples; "
                    "give one label per sample"
                )
            labels.append(file_labels)
        samples.extend(found)
    if labels and len(labels) != len(files):
        raise InputError(f"{path}: some files hold {LABELS!r} and some do not; give labels in every file or none")
    if not samples:
        raise InputError(f"the samples at {path} are empty; give at least one sample per model input")
    return samples, (np.concatenate(labels) if labels else None)
