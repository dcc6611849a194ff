"""manifest.json: one builder and one sha256 check for the parts of a cut."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitinf.contract.files import sha256_file
from splitinf.contract.manifest import (
    build_manifest,
    check_part,
    part_entry,
    read_manifest,
    with_part,
    write_manifest,
)
from splitinf.contract.tensors import TensorSpec
from splitinf.errors import IntegrityError


def _manifest(tail_sha: str) -> dict[str, object]:
    return build_manifest(
        source_name="model.onnx",
        source_sha256="ab" * 32,
        cut_id="relu_0",
        cut_tensors=[TensorSpec("h", "float32", ("N", 8))],
        cut_bytes=32,
        codec="fp16",
        opset=[("", 17)],
        ir_version=8,
        parts={"tail": {"file": "model.onnx", "sha256": tail_sha}},
        wire=[TensorSpec("h.fp16", "float16", ("N", 8))],
    )


def test_build_write_read_round_trip(tmp_path: Path) -> None:
    manifest = _manifest("00" * 32)
    assert list(manifest) == ["format", "source", "cut", "codec", "wire", "opset", "ir_version", "parts"]
    assert manifest["cut"] == {
        "id": "relu_0",
        "tensors": [{"name": "h", "dtype": "float32", "shape": ["N", 8]}],
        "bytes": 32,
    }
    path = write_manifest(tmp_path, manifest)
    assert path.name == "manifest.json" and json.loads(path.read_text()) == manifest == read_manifest(tmp_path)
    assert read_manifest(tmp_path / "elsewhere") is None


def test_with_part_copies(tmp_path: Path) -> None:
    manifest = _manifest("00" * 32)
    updated = with_part(manifest, "head", {"file": "head.onnx", "sha256": "11" * 32})
    assert updated["parts"] == {
        "tail": {"file": "model.onnx", "sha256": "00" * 32},
        "head": {"file": "head.onnx", "sha256": "11" * 32},
    }
    assert set(manifest["parts"]) == {"tail"}  # type: ignore[call-overload]


def test_check_part_compares_the_files_sha256(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"tail bytes")
    check_part(tmp_path, "tail", model)  # no manifest: nothing to check against
    write_manifest(tmp_path, _manifest(sha256_file(model)))
    check_part(tmp_path, "tail", model)
    check_part(tmp_path, "tail", model, sha256_file(model))
    model.write_bytes(b"another tail")
    with pytest.raises(
        IntegrityError, match=r"refusing to load .*model.onnx: its sha256 is [0-9a-f]{64} but .* expects"
    ):
        check_part(tmp_path, "tail", model)
    with pytest.raises(IntegrityError, match="names no head"):
        check_part(tmp_path, "head", model)


@pytest.mark.parametrize("text", ["not json", '{"parts": []}', '{"parts": {"tail": {"file": "model.onnx"}}}', "{}"])
def test_an_unreadable_manifest_is_an_integrity_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(IntegrityError, match="not a readable manifest"):
        read_manifest(tmp_path)


def test_external_weights_are_part_of_the_part(tmp_path: Path) -> None:
    model, data = tmp_path / "model.onnx", tmp_path / "model.onnx.data"
    model.write_bytes(b"graph")
    assert part_entry(model) == {"file": "model.onnx", "sha256": sha256_file(model)}
    data.write_bytes(b"weights")
    entry = part_entry(model)
    assert entry["data"] == {"file": "model.onnx.data", "sha256": sha256_file(data)}
    write_manifest(tmp_path, with_part(_manifest("00" * 32), "tail", entry))
    check_part(tmp_path, "tail", model)
    data.write_bytes(b"other weights")
    with pytest.raises(IntegrityError, match=r"refusing to load .*model.onnx.data: its sha256"):
        check_part(tmp_path, "tail", model)
    data.unlink()
    with pytest.raises(IntegrityError, match="names model.onnx.data for the tail, which is missing"):
        check_part(tmp_path, "tail", model)
