"""``splitinf cuts`` and ``splitinf split``: the CLI contract and its bad-input messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from splitinf.cli import main
from splitinf.contract.files import sha256_file
from splitinf.tools.testing import graphs as models


@pytest.fixture
def residual(tmp_path: Path) -> Path:
    path = tmp_path / "residual.onnx"
    onnx.save_model(models.residual_cnn(), str(path))
    return path


@pytest.fixture
def two_io(tmp_path: Path) -> Path:
    path = tmp_path / "two.onnx"
    onnx.save_model(models.two_in_two_out(), str(path))
    return path


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_cuts_table_lists_ids_bytes_and_tensors(residual: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cuts", str(residual)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["#", "id", "bytes/sample"]
    assert "add_0" in out and "relu_0 float32[N,8,16,16], conv_1 float32[N,8,16,16]" in out
    assert "16 cuts of" in out


def test_cuts_json_contract(two_io: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cuts", str(two_io), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == str(two_io) and data["sha256"] == sha256_file(two_io)
    first = data["cuts"][0]
    assert first["id"] == "a+b" and first["bytes"] == 48
    assert first["tensors"] == [
        {"name": "a", "dtype": "float32", "shape": ["N", 8]},
        {"name": "b", "dtype": "float32", "shape": ["N", 4]},
    ]
    assert {t["name"] for t in data["cuts"][-1]["tensors"]} == {"y1", "y2"}
    assert [c["head_nodes"] for c in data["cuts"]] == sorted(c["head_nodes"] for c in data["cuts"])


def test_split_with_verify_and_repository(residual: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, repo = tmp_path / "out", tmp_path / "repo"
    argv = ["split", str(residual), "--cut", "add_0", "-o", str(out), "--verify", "--repo", str(repo)]
    assert main([*argv, "--name", "res_tail"]) == 0
    printed = capsys.readouterr().out
    assert "verified on 4 input sets: max abs error 0" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cut"]["id"] == "add_0" and manifest["verify"]["max_rel_error"] == 0.0
    model_file = repo / "res_tail" / "1" / "model.onnx"
    beside = json.loads((model_file.parent / "manifest.json").read_text())
    assert beside["parts"]["tail"]["sha256"] == sha256_file(model_file)
    assert model_file.read_bytes() == (out / "tail.onnx").read_bytes()


def test_split_by_tensor_names_with_samples(two_io: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = tmp_path / "samples.npz"
    np.savez(samples, a=np.ones((3, 8), np.float32), b=np.ones((3, 4), np.float32))
    argv = ["split", str(two_io), "--cut", "b,relu_1", "-o", str(tmp_path / "o"), "--samples", str(samples)]
    assert main(argv) == 0
    assert "verified on 3 input sets" in capsys.readouterr().out  # the 3 samples along the first axis, no random ones


def test_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "does not exist" in _error(capsys, ["cuts", str(tmp_path / "none.onnx")])


def test_non_onnx_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "readme.onnx"
    path.write_text("hello\n")
    assert "not" in _error(capsys, ["cuts", str(path)])


def test_corrupt_protobuf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "half.onnx"
    path.write_bytes(models.residual_cnn().SerializeToString()[:700])
    assert "not a readable ONNX model" in _error(capsys, ["split", str(path), "--cut", "x", "-o", str(tmp_path / "o")])


def test_checker_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = models.mlp()
    model.graph.node[2].output[0] = model.graph.node[1].output[0]  # two nodes write one tensor
    path = tmp_path / "ssa.onnx"
    path.write_bytes(model.SerializeToString())
    assert "fails onnx.checker" in _error(capsys, ["cuts", str(path)])


def test_unknown_cut_id_lists_valid_ones(residual: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _error(capsys, ["split", str(residual), "--cut", "layer7", "-o", str(tmp_path / "o")])
    assert "unknown cut id 'layer7'" in line and "x, conv_0, relu_0" in line
    assert not (tmp_path / "o").exists()


def test_tensors_that_do_not_separate(two_io: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _error(capsys, ["split", str(two_io), "--cut", "relu_1", "-o", str(tmp_path / "o")])
    assert "do not separate" in line and "still depends on input 'b'" in line


def test_unwritable_output_directory(residual: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = _error(capsys, ["split", str(residual), "--cut", "add_0", "-o", str(blocker / "out")])
    assert "cannot write" in line and "writable" in line


def test_samples_with_wrong_names(residual: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = tmp_path / "s.npz"
    np.savez(samples, image=np.ones((1, 3, 16, 16), np.float32))
    line = _error(
        capsys, ["split", str(residual), "--cut", "add_0", "-o", str(tmp_path / "o"), "--samples", str(samples)]
    )
    assert "missing ['x'], unknown ['image']" in line


def test_repo_without_name(residual: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["split", str(residual), "--cut", "add_0", "-o", str(tmp_path / "o"), "--repo", str(tmp_path / "r")]
    assert "--repo and --name go together" in _error(capsys, argv)


def test_bad_input_through_the_console_script_has_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x08\x07\x12\x05junk" * 10)
    result = subprocess.run(
        [sys.executable, "-m", "splitinf", "split", str(path), "--cut", "x", "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("splitinf split: error: ")
