"""The device's file interface: requests from ``.npy``/``.npz`` files, answers to ``.npz`` and JSON, an inbox.

- ``read_input_file`` turns one file into requests. A ``.npy`` holds the model's single input; a
  ``.npz`` names its arrays by input name, and any other array (say ``labels``) is refused. A
  stacked array (one more leading axis than the input, or N rows where the batch dimension is
  fixed at 1) is one request per sample; where the batch dimension is dynamic, ``batch`` samples
  go in each request (1 unless asked).
- ``InputFile.join`` puts the answers back in the file's layout, and ``write_answer`` writes them
  as ``OUT/<stem>.npz``, one array per model output, atomically.
- ``output_fields`` is the JSON form of one answer (shape, dtype, values; top-k with labels).
- ``inbox_files`` polls a directory; ``retire`` moves an answered file to ``done/`` (or deletes it)
  so that a restart answers nothing twice and nothing is remembered in memory.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitinf.contract.samples import read_npz
from splitinf.contract.tensors import TensorSpec
from splitinf.errors import InputError, OutputError, UsageError

__all__ = [
    "SUFFIXES",
    "InputFile",
    "check_labels",
    "inbox_files",
    "load_labels",
    "output_fields",
    "read_input_file",
    "retire",
    "write_answer",
]

SUFFIXES = (".npy", ".npz")


@dataclass(frozen=True)
class InputFile:
    """One input file as requests; ``join`` is how its answers stack back: "one", "stack" or "concat"."""

    path: Path
    requests: list[dict[str, np.ndarray]]
    labels: list[str]
    join: str

    def answers(self, outputs: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The answers of this file's requests as one array per output, in the layout of the input."""
        if self.join == "one":
            return dict(outputs[0])
        combine = np.stack if self.join == "stack" else np.concatenate
        return {name: combine([answer[name] for answer in outputs]) for name in outputs[0]}


def _load(path: Path, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    names = [spec.name for spec in specs]
    try:
        if path.suffix == ".npy":
            if len(names) != 1:
                raise InputError(f"{path}: the model has inputs {names}; give a .npz with one array per input name")
            return {names[0]: np.load(path, allow_pickle=False)}
        if path.suffix == ".npz":
            arrays = read_npz(path)
        else:
            raise InputError(f"{path}: expected a .npy or .npz file")
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path} is not a readable numpy file ({exc}); save arrays with numpy.save") from exc
    extra = sorted(set(arrays) - set(names))
    missing = [name for name in names if name not in arrays]
    if extra or missing:
        raise InputError(
            f"{path}: a .npz holds one array per model input, named {names}; "
            + (f"it has extra array(s) {extra}" if extra else "")
            + ("; " if extra and missing else "")
            + (f"it lacks {missing}" if missing else "")
            + " (save only the inputs, e.g. numpy.savez(path, **{name: array}))"
        )
    return arrays


def _dynamic(dim: int | str | None) -> bool:
    return not isinstance(dim, int) or dim < 0


def _layout(array: np.ndarray, spec: TensorSpec) -> tuple[str, int]:
    """How an array holds samples of ``spec``: ("one"|"stack"|"concat", number of samples)."""
    shape = spec.shape
    if array.ndim == len(shape) + 1:
        return "stack", array.shape[0]
    if array.ndim == len(shape) and shape and array.shape[0] != 1 and (shape[0] == 1 or _dynamic(shape[0])):
        return "concat", array.shape[0]
    return "one", 1


def read_input_file(path: Path, specs: Sequence[TensorSpec], batch: int = 1) -> InputFile:
    """The requests in one file (see the module docstring); ``batch`` > 1 needs a dynamic batch dimension."""
    arrays = _load(path, specs)
    layouts = {spec.name: _layout(arrays[spec.name], spec) for spec in specs}
    if len(set(layouts.values())) != 1:
        raise InputError(f"{path}: the arrays hold different numbers of samples: {layouts}")
    join, count = next(iter(layouts.values()))
    dynamic = all(spec.shape and _dynamic(spec.shape[0]) for spec in specs)
    if batch > 1 and not dynamic:
        raise UsageError(f"--batch {batch}: the model's batch dimension is fixed; only a dynamic one takes batches")
    if join == "one":
        return InputFile(path, [arrays], [str(path)], join)
    step = batch if join == "concat" else 1
    requests: list[dict[str, np.ndarray]] = []
    labels: list[str] = []
    for start in range(0, count, step):
        stop = min(start + step, count)
        if join == "stack":
            requests.append({name: array[start] for name, array in arrays.items()})
        else:
            requests.append({name: array[start:stop] for name, array in arrays.items()})
        labels.append(f"{path}[{start}]" if stop == start + 1 else f"{path}[{start}:{stop}]")
    return InputFile(path, requests, labels, join)


def write_answer(directory: Path, source: Path, outputs: Mapping[str, np.ndarray]) -> Path:
    """``directory/<source stem>.npz`` holding every output by name; readers never see a partial file."""
    target = directory / f"{source.stem}.npz"
    partial = directory / f".{source.stem}.npz.partial"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as f:
            np.savez(f, **dict(outputs))  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
        os.replace(partial, target)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}; give a writable --output DIR") from exc
    return target


def load_labels(path: Path) -> list[str]:
    """Class names, one per line (blank lines ignored)."""
    try:
        labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--labels {path}: cannot read it ({exc}); give a text file, one class name per line") from exc
    if not labels:
        raise UsageError(f"--labels {path} holds no names; give one class name per line")
    return labels


def check_labels(labels: Sequence[str], outputs: Sequence[TensorSpec]) -> None:
    """Refuse labels that fit no output (the last dimension of a classifier's output is its classes)."""
    sizes = {spec.name: spec.shape[-1] if spec.shape else None for spec in outputs}
    if not any(size == len(labels) or _dynamic(size) for size in sizes.values()):
        raise UsageError(f"--labels has {len(labels)} names, but the model's outputs have {sizes} classes")


def _top(row: np.ndarray, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-row, kind="stable")[:k]
    return [{"label": labels[i], "index": int(i), "score": float(row[i])} for i in order]


def output_fields(
    outputs: Mapping[str, np.ndarray], labels: Sequence[str] | None = None, top_k: int = 5
) -> dict[str, Any]:
    """JSON for one answer: per output its shape, dtype and values, or its top-k classes when labelled."""
    fields: dict[str, Any] = {}
    for name, array in outputs.items():
        field: dict[str, Any] = {"shape": list(array.shape), "dtype": array.dtype.name}
        if labels is not None and array.ndim and array.shape[-1] == len(labels):
            rows = [_top(row, labels, top_k) for row in array.reshape(-1, len(labels))]
            field["top"] = rows[0] if len(rows) == 1 else rows
        else:
            field["values"] = array.tolist()
        fields[name] = field
    return fields


def inbox_files(directory: Path, stop: threading.Event, interval_s: float = 0.5, max_files: int = 0) -> Iterator[Path]:
    """New ``.npy``/``.npz`` files in ``directory``, oldest name first, until ``stop`` is set.

    The caller retires each file before asking for the next, so a listing is the whole state;
    hidden files (``.name``) are skipped: write elsewhere (or to a hidden name) and rename into place.
    """
    count = 0
    while not stop.is_set():
        fresh = sorted(
            p for p in directory.iterdir() if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
        for path in fresh:
            if not path.exists():  # retired meanwhile by another reader of the same inbox
                continue
            count += 1
            yield path
            if stop.is_set() or (max_files and count >= max_files):
                return
        if not fresh:
            stop.wait(interval_s)  # polling a directory: there is no event to wait on portably


def retire(path: Path, *, delete: bool, subdirectory: str = "done") -> Path | None:
    """Move an answered (or refused) file out of the inbox, to ``subdirectory``, or delete it."""
    try:
        if delete:
            path.unlink(missing_ok=True)
            return None
        target = path.parent / subdirectory / path.name
        target.parent.mkdir(exist_ok=True)
        os.replace(path, target)
    except OSError as exc:
        raise OutputError(f"cannot move {path} out of the inbox: {exc.strerror or exc}; make it writable") from exc
    return target
