"""The repository as a jail: which files a model version may open, checked before onnxruntime opens any.

A version folder's ``model.onnx`` may name external data files (TensorProto ``external_data``
``location``); those must be plain files inside the same version folder. Every path a model
reaches (model folder, version folder, ``model.onnx``, its data files) must resolve inside the
repository, so a symlink out of it is refused. ``manifest.json`` must list the sha256 of
``model.onnx`` and of every data file, unless the repository is served unsigned on purpose.

The server does not import ``onnx``: ``external_data_locations`` reads the few ModelProto fields
that can hold a tensor with a minimal protobuf descriptor of its own (field numbers from onnx.proto3).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from splitinf.contract.plan import sha256_file
from splitinf.errors import ConfigError, IntegrityError

__all__ = ["MANIFEST_FILE", "ModelFiles", "check_model_files", "external_data_locations", "inside"]

MANIFEST_FILE = "manifest.json"

# (message, [(field name, number, type, repeated, message type)]): onnx.proto3's numbering, only the
# fields on a path to a TensorProto's external_data. Everything else parses as unknown fields.
_MSG, _STR, _INT = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE, 9, 5
_ONNX_SUBSET: tuple[tuple[str, tuple[tuple[str, int, int, bool, str], ...]], ...] = (
    ("Entry", (("key", 1, _STR, False, ""), ("value", 2, _STR, False, ""))),
    ("Tensor", (("name", 8, _STR, False, ""), ("external_data", 13, _MSG, True, "Entry"))),
    ("Sparse", (("values", 1, _MSG, False, "Tensor"), ("indices", 2, _MSG, False, "Tensor"))),
    (
        "Attribute",
        (
            ("t", 5, _MSG, False, "Tensor"),
            ("g", 6, _MSG, False, "Graph"),
            ("tensors", 10, _MSG, True, "Tensor"),
            ("graphs", 11, _MSG, True, "Graph"),
            ("sparse_tensor", 22, _MSG, False, "Sparse"),
            ("sparse_tensors", 23, _MSG, True, "Sparse"),
        ),
    ),
    ("Node", (("attribute", 5, _MSG, True, "Attribute"),)),
    (
        "Graph",
        (
            ("node", 1, _MSG, True, "Node"),
            ("initializer", 5, _MSG, True, "Tensor"),
            ("sparse", 15, _MSG, True, "Sparse"),
        ),
    ),
    ("Function", (("node", 7, _MSG, True, "Node"),)),
    ("Training", (("initialization", 1, _MSG, False, "Graph"), ("algorithm", 2, _MSG, False, "Graph"))),
    (
        "Model",
        (
            ("graph", 7, _MSG, False, "Graph"),
            ("training_info", 20, _MSG, True, "Training"),
            ("functions", 25, _MSG, True, "Function"),
        ),
    ),
)


def _model_class() -> Any:
    file = descriptor_pb2.FileDescriptorProto(name="splitinf_onnx_subset.proto", package="splitinf_onnx_subset")
    for name, fields in _ONNX_SUBSET:
        message = file.message_type.add(name=name)
        for field_name, number, kind, repeated, type_name in fields:
            message.field.add(
                name=field_name,
                number=number,
                type=kind,
                label=3 if repeated else 1,
                type_name=f".splitinf_onnx_subset.{type_name}" if type_name else None,
            )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("splitinf_onnx_subset.Model"))


_Model = _model_class()


def _tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _attribute_tensors(node.attribute)


def _attribute_tensors(attributes: Any) -> Iterator[Any]:
    for attribute in attributes:
        yield attribute.t
        yield from attribute.tensors
        for sparse in (attribute.sparse_tensor, *attribute.sparse_tensors):
            yield from (sparse.values, sparse.indices)
        for graph in (attribute.g, *attribute.graphs):
            yield from _tensors(graph)


def external_data_locations(model_file: Path) -> dict[str, str]:
    """``{location: first tensor naming it}`` for every tensor of ``model_file`` kept in external data."""
    model = _Model.FromString(model_file.read_bytes())
    graphs = [model.graph, *(g for info in model.training_info for g in (info.initialization, info.algorithm))]
    tensors = [t for graph in graphs for t in _tensors(graph)]
    tensors += [t for function in model.functions for node in function.node for t in _attribute_tensors(node.attribute)]
    locations: dict[str, str] = {}
    for tensor in tensors:
        for entry in tensor.external_data:
            if entry.key == "location":
                locations.setdefault(entry.value, tensor.name)
    return locations


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, symlinks followed, is ``root`` (already resolved) or lies under it."""
    return path.resolve().is_relative_to(root)


@dataclass(frozen=True)
class ModelFiles:
    """A version folder's files, checked: the model's sha256 and its data files (name -> sha256)."""

    model: Path
    sha256: str
    data: dict[str, str]


def _data_files(model_file: Path, version_dir: Path) -> dict[str, Path]:
    """The external data files ``model_file`` names, each refused unless it is a file in ``version_dir``."""
    files = {}
    for location, tensor in external_data_locations(model_file).items():
        relative = PurePath(location)
        target = version_dir / relative
        if relative.is_absolute() or ".." in relative.parts or not inside(target, version_dir):
            raise IntegrityError(
                f"refusing to load {model_file}: tensor {tensor!r} names external data {location!r} outside its "
                f"version folder {version_dir}; keep data files beside model.onnx (re-export with `splitinf split`)"
            )
        if not target.is_file():
            raise IntegrityError(f"refusing to load {model_file}: its external data file {target} is missing")
        files[relative.as_posix()] = target
    return files


def _manifest_tail(manifest_path: Path) -> dict[str, Any]:
    try:
        tail = json.loads(manifest_path.read_text())["parts"]["tail"]
        if not isinstance(tail, dict) or not isinstance(tail["sha256"], str):
            raise TypeError("parts.tail.sha256 is not a string")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{manifest_path}: not a readable manifest with parts.tail.sha256 ({exc})") from exc
    return tail


def _check_manifest(files: ModelFiles, manifest_path: Path) -> None:
    tail = _manifest_tail(manifest_path)
    if tail["sha256"] != files.sha256:
        raise IntegrityError(
            f"refusing to load {files.model}: its sha256 is {files.sha256} but {manifest_path} expects "
            f"{tail['sha256']}; re-export the tail with `splitinf split` or remove the stale manifest"
        )
    listed = tail.get("external_data", {})
    for name, digest in files.data.items():
        expected = listed.get(name) if isinstance(listed, dict) else None
        if expected != digest:
            raise IntegrityError(
                f"refusing to load {files.model}: its external data {name} has sha256 {digest} but {manifest_path} "
                f"{'expects ' + str(expected) if expected else 'does not list it (parts.tail.external_data)'}; "
                "re-export the tail with `splitinf split`"
            )


def check_model_files(model_file: Path, repo_root: Path, *, allow_unsigned: bool = False) -> ModelFiles:
    """Check one version folder before onnxruntime opens it; IntegrityError (or ConfigError) names the problem.

    ``repo_root`` is the repository, resolved. Refused: a model folder, version folder or
    ``model.onnx`` that resolves outside it; external data outside the version folder or a
    symlink out of it; a missing or mismatching manifest (unless ``allow_unsigned``).
    """
    version_dir = model_file.parent
    for path in (version_dir.parent, version_dir, model_file):
        if not inside(path, repo_root):
            raise ConfigError(
                f"refusing to load {model_file}: {path} is a symlink to {path.resolve()}, outside the repository "
                f"{repo_root}; copy the model into the repository instead"
            )
    data = _data_files(model_file, version_dir.resolve())
    files = ModelFiles(model_file, sha256_file(model_file), {name: sha256_file(p) for name, p in data.items()})
    manifest_path = version_dir / MANIFEST_FILE
    if manifest_path.is_file() and inside(manifest_path, version_dir.resolve()):
        _check_manifest(files, manifest_path)
    elif not allow_unsigned:
        raise IntegrityError(
            f"refusing to load {model_file}: no {MANIFEST_FILE} beside it to check its sha256; export the tail "
            "with `splitinf split --repo`, or set allow_unsigned = true in the server config to serve unchecked models"
        )
    return files
