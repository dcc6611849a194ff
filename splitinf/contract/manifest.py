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
               "tail": {"file": "tail.onnx", "sha256": "..."}},
     "verify": {...}}                                      (optional: the check against the source)
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
    parts: Mapping[str, tuple[str, str]],
    wire: Sequence[TensorSpec] | None = None,
) -> dict[str, Any]:
    """The manifest of a cut's parts; ``parts`` maps "head"/"tail" to (file name, sha256)."""
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
    manifest["parts"] = {part: {"file": file, "sha256": sha256} for part, (file, sha256) in parts.items()}
    return manifest


def with_part(manifest: Mapping[str, Any], part: str, file: str, sha256: str) -> dict[str, Any]:
    """A copy of ``manifest`` whose ``part`` is ``file`` with ``sha256`` (the caller's dict is not changed)."""
    updated = copy.deepcopy(dict(manifest))
    updated.setdefault("parts", {})[part] = {"file": file, "sha256": sha256}
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


def check_part(directory: str | os.PathLike[str], part: str, file: Path, sha256: str | None = None) -> None:
    """When ``directory`` holds a manifest, ``file`` must have the sha256 it records
    for ``part`` (``sha256``: the file's, when the caller has it already); ``IntegrityError`` otherwise."""
    manifest = read_manifest(directory)
    if manifest is None:
        return
    if part not in manifest["parts"]:
        raise IntegrityError(f"{Path(directory) / MANIFEST_FILE} names no {part}; remove it or re-export the parts")
    expected = manifest["parts"][part]["sha256"]
    digest = sha256 if sha256 is not None else sha256_file(file)
    if digest != expected:
        raise IntegrityError(
            f"refusing to load {file}: its sha256 is {digest} but {Path(directory) / MANIFEST_FILE} expects "
            f"{expected}; re-export the parts with `splitinf split` or remove the stale manifest"
        )
