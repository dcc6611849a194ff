"""``manifest.json``: what a directory of model parts holds, and the sha256 of each part.

Written beside the parts by ``splitinf split`` (``head.onnx``, ``tail.onnx``), beside a tail in
a model repository (``MODEL/1/model.onnx``) and by ``splitinf plan`` for each tail::

    {"format": 1,
     "source": {"name": "model.onnx", "sha256": "..."},
     "cut": {"id": "relu_0", "tensors": [<tensor spec>, ...], "bytes": 1024},
     "codec": "fp32",
     "wire": [<tensor spec>, ...],                         (plans only: the tensors on the wire)
     "opset": [{"domain": "", "version": 17}], "ir_version": 8,
     "parts": {"head": {"file": "head.onnx", "sha256": "..."},
               "tail": {"file": "tail.onnx", "sha256": "...",
                        "data": {"file": "tail.onnx.data", "sha256": "..."}}},   (weights saved apart)
     "verify": {...}}                                      (optional: the check against the source)

A plan's tail names the device files of its head instead of one ``head``: ``head.0``, ``head.1``, ...
(the segments up to the cut, then the codec graph), each with its path in the plan directory and sha256;
an int8 head sharing the tail lists its files as ``head_int8.0``, ``head_int8.1``, ... (``head_int8``, one
file, in plans from before int8 heads were chains).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from splitinf.contract.files import sha256_file, write_json_atomic
from splitinf.contract.tensors import TensorSpec
from splitinf.errors import IntegrityError

__all__ = [
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "build_manifest",
    "check_part",
    "part_entry",
    "read_manifest",
    "with_part",
    "write_manifest",
]

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1


def build_manifest(
    *,
    source_name: str,
    source_sha256: str,
    cut_id: str,
    cut_tensors: Iterable[TensorSpec],
    cut_bytes: int,
    codec: str,
    opset: Iterable[tuple[str, int]],
    ir_version: int,
    parts: Mapping[str, Mapping[str, Any]],
    wire: Sequence[TensorSpec] | None = None,
) -> dict[str, Any]:
    """The manifest of a cut's parts; ``parts`` maps "head"/"tail" to their ``part_entry``."""
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "source": {"name": source_name, "sha256": source_sha256},
        "cut": {"id": cut_id, "tensors": [t.to_json() for t in cut_tensors], "bytes": int(cut_bytes)},
        "codec": codec,
    }
    if wire is not None:
        manifest["wire"] = [t.to_json() for t in wire]
    manifest["opset"] = [{"domain": domain, "version": version} for domain, version in opset]
    manifest["ir_version"] = ir_version
    manifest["parts"] = {part: dict(entry) for part, entry in parts.items()}
    return manifest


def part_entry(path: Path, sha256: str | None = None) -> dict[str, Any]:
    """A part's manifest entry: its file name and sha256 (``sha256``: when the caller has it already),
    and those of its external data file (``NAME.data``, weights saved apart) when it has one."""
    entry: dict[str, Any] = {"file": path.name, "sha256": sha256 or sha256_file(path)}
    data = path.with_name(path.name + ".data")
    if data.is_file():
        entry["data"] = {"file": data.name, "sha256": sha256_file(data)}
    return entry


def with_part(manifest: Mapping[str, Any], part: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``manifest`` whose ``part`` is ``entry`` (the caller's dict is not changed)."""
    updated = copy.deepcopy(dict(manifest))
    updated.setdefault("parts", {})[part] = dict(entry)
    return updated


def write_manifest(directory: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Path:
    path = Path(directory) / MANIFEST_FILE
    write_json_atomic(path, manifest)
    return path


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The directory's manifest, None when it has none; ``IntegrityError`` when it is not a manifest."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        parts = manifest["parts"]
        if not isinstance(parts, dict) or not all(isinstance(p, dict) and "sha256" in p for p in parts.values()):
            raise ValueError("every part needs a sha256")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{path}: not a readable manifest with parts and their sha256 ({exc})") from exc
    return dict(manifest)


def check_part(
    directory: str | os.PathLike[str],
    part: str,
    file: Path,
    sha256: str | None = None,
    data_files: Mapping[str, str] | None = None,
) -> None:
    """When ``directory`` holds a manifest, ``file`` (and its external data file, when the manifest names
    one) must have the sha256 the manifest records for ``part`` (``sha256``: the file's, when the caller
    has it already); ``IntegrityError`` otherwise. ``data_files`` (name: sha256) are the external data
    files the model really references: each must be the one the manifest lists, with its sha256."""
    manifest = read_manifest(directory)
    if manifest is None:
        return
    manifest_path = Path(directory) / MANIFEST_FILE
    entry = manifest["parts"].get(part)
    if entry is None:
        raise IntegrityError(f"{manifest_path} names no {part}; remove it or re-export the parts")
    checks = [(file, sha256, entry["sha256"])]
    data = entry.get("data")
    if data is not None:
        checks.append((file.parent / str(data.get("file")), None, data.get("sha256")))
    for path, known, expected in checks:
        if not path.is_file():
            raise IntegrityError(f"{manifest_path} names {path.name} for the {part}, which is missing")
        digest = known if known is not None else sha256_file(path)
        if digest != expected:
            raise IntegrityError(
                f"refusing to load {path}: its sha256 is {digest} but {manifest_path} expects "
                f"{expected}; re-export the parts with `splitinf split` or remove the stale manifest"
            )
    listed = {str(data.get("file")): data.get("sha256")} if data is not None else {}
    for name, digest in (data_files or {}).items():
        if listed.get(name) != digest:
            raise IntegrityError(
                f"refusing to load {file}: its external data {name} is not the one {manifest_path} lists for "
                f"the {part} ({sorted(listed) or 'none'}); re-export the parts with `splitinf split`"
            )
