"""The plan directory as a jail: what the device may open, checked before anything opens it.

``check_plan_files`` (``load_plan`` calls it for the sides it checks) checks every file of every
option (each segment and codec graph of a head, each file of the local model's chain, once however
many options share it) and refuses with a PlanError:

- a file path that is absolute, has a ``..`` part, or resolves (symlinks followed) outside the
  plan directory;
- a file without a sha256 in plan.json, unless plan.json says ``"unsigned": true`` (then files
  without one load unchecked, and a warning says so);
- an ONNX file whose external data is not a file in that model's own folder (an absolute
  location, ``..``, or a symlink leaving the folder).

A file whose sha256 differs from the plan's is an IntegrityError.

External data is found by reading the ONNX file's protobuf wire format for the ``location``
entries of ``TensorProto.external_data`` (field numbers from onnx.proto), because the device has
neither onnx nor its generated classes (and ``contract`` imports no protobuf). onnxruntime refuses
the same locations when it opens a model by path, but only from 1.24 on (the declared bound is
1.17), and its error names neither the plan nor the option; so the check is ours and comes first.
The scan walks only the messages that can hold tensors and skips everything else, weights included,
without copying.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from splitinf.contract.files import sha256_file, stays_inside
from splitinf.contract.plan import Option, Plan
from splitinf.errors import IntegrityError, PlanError

__all__ = ["check_plan_files", "external_data_locations"]

log = logging.getLogger(__name__)

# For each message that can hold a tensor: field number -> the message in that field (onnx.proto).
_TENSOR_FIELDS: dict[str, dict[int, str]] = {
    "model": {7: "graph", 25: "function"},  # ModelProto.graph, .functions
    "function": {7: "node", 11: "attribute"},  # FunctionProto.node, .attribute_proto
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # GraphProto.node, .initializer, .sparse_initializer
    "node": {5: "attribute"},  # NodeProto.attribute
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},  # SparseTensorProto.values, .indices
    "tensor": {13: "entry"},  # TensorProto.external_data: StringStringEntryProto (1 key, 2 value)
}
_MAX_NESTING = 64  # subgraphs in subgraphs; deeper is a hostile file, not a model


def check_plan_files(plan: Plan, sides: Sequence[str] = ("device",), *, unsigned: bool = False) -> None:
    """Check the files of the named sides ("device", "server") of a plan loaded from a directory."""
    if plan.root is None:
        raise PlanError("this plan was not loaded from a directory, so it has no files to check")
    if unsigned:
        log.warning("plan %s is marked unsigned: its files without a sha256 are loaded unchecked", plan.root)
    checked: set[tuple[str, str | None]] = set()  # a segment shared by several options is checked once
    for option, relative, expected in _plan_files(plan, sides):
        if (relative, expected) in checked:
            continue
        checked.add((relative, expected))
        path = _inside(plan.root, relative, option)
        if not path.is_file():
            raise PlanError(f"the plan's option {option.id!r} needs {path}, which is missing")
        if expected is None and not unsigned:
            raise PlanError(
                f"the plan's option {option.id!r} has no sha256 for {relative}, so a changed file would run "
                'unchecked; re-run `splitinf plan`, or set "unsigned": true in plan.json to accept that'
            )
        if expected is not None and (actual := sha256_file(path)) != expected:
            raise IntegrityError(
                f"{path} has sha256 {actual}, but the plan expects {expected}; "
                "the file was changed or comes from another plan"
            )
        if path.suffix == ".onnx":
            _check_external_data(path, option)


def _plan_files(plan: Plan, sides: Sequence[str]) -> Iterator[tuple[Option, str, str | None]]:
    for option in plan.options:
        if "device" in sides:
            for relative, expected in option.device_files:
                yield option, relative, expected
        if "server" in sides and option.kind == "split":
            yield option, f"server/{option.tail_model}/{option.tail_version}/model.onnx", option.tail_sha256


def _inside(root: Path, relative: str, option: Option) -> Path:
    path = root / relative
    if not stays_inside(root, relative):
        raise PlanError(
            f"the plan's option {option.id!r} names {relative!r}, outside the plan directory {root}; "
            "plan files must be relative paths inside it (no absolute path, '..' or symlink leaving it)"
        )
    return path


def _check_external_data(path: Path, option: Option) -> None:
    try:
        locations = external_data_locations(path)
    except ValueError as exc:
        raise PlanError(f"the plan's option {option.id!r}: {path} is not a readable ONNX file ({exc})") from exc
    folder = path.parent
    for location in sorted(locations):
        if not stays_inside(folder, location):
            raise PlanError(
                f"the plan's option {option.id!r}: {path} reads external data from {location!r}, outside its "
                f"folder {folder}; external data must be files beside the model (no absolute path, '..' or "
                "symlink leaving the folder)"
            )


def external_data_locations(path: str | os.PathLike[str]) -> set[str]:
    """The ``location`` of every external-data tensor in an ONNX file (initializers, subgraphs, functions)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return set()
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    locations: set[str] = set()
    _walk(memoryview(data), "model", 0, locations)
    return locations


def _walk(message: memoryview, kind: str, depth: int, locations: set[str]) -> None:
    if depth > _MAX_NESTING:
        raise ValueError(f"messages nested deeper than {_MAX_NESTING}")
    children = _TENSOR_FIELDS[kind]
    for number, payload in _fields(message):
        child = children.get(number)
        if payload is None or child is None:
            continue
        if child == "entry":
            entry = {n: bytes(p).decode("utf-8", "replace") for n, p in _fields(payload) if p is not None}
            if entry.get(1) == "location":
                locations.add(entry.get(2, ""))
        else:
            _walk(payload, child, depth + 1, locations)


def _fields(message: memoryview) -> Iterator[tuple[int, memoryview | None]]:
    """(field number, payload) of each field of one protobuf message; payload None unless length-delimited."""
    pos, end = 0, len(message)
    while pos < end:
        key, pos = _varint(message, pos)
        number, wire_type = key >> 3, key & 7
        payload = None
        if wire_type == 0:
            _, pos = _varint(message, pos)
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            length, pos = _varint(message, pos)
            payload = message[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"unexpected protobuf wire type {wire_type}")
        if pos > end:
            raise ValueError("truncated protobuf message")
        yield number, payload


def _varint(message: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 64:
        if pos >= len(message):
            raise ValueError("truncated protobuf varint")
        byte = message[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("protobuf varint longer than 64 bits")
