"""Environment and usage errors of the real ``splitinf`` process: exit 2 with the fix, never a traceback."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from splitinf.contract.files import sha256_file, write_json_atomic
from splitinf.offline.profiling import profile_model
from splitinf.tools.testing.graphs import mlp

WORKTREE = Path(__file__).resolve().parents[2]


def splitinf(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    return subprocess.run(
        [sys.executable, "-m", "splitinf", *argv], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


def test_serve_with_a_metrics_port_in_use_exits_2_naming_the_port(
    busy_port: int, tmp_path: Path, write_v2_repository: Callable[..., Path]
) -> None:
    repo = write_v2_repository(tmp_path / "repo", {"mlp": mlp()})
    result = splitinf("serve", "--repo", str(repo), "--port", "0", "--metrics-port", str(busy_port))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert str(busy_port) in line and "--metrics-port" in line, line


def test_plan_with_an_npy_calibration_exits_2_naming_the_npz_format(tmp_path: Path) -> None:
    model = mlp(batch=1)
    model_path = tmp_path / "mlp.onnx"
    onnx.save_model(model, model_path)
    profile = profile_model(model, name="mlp", sha256=sha256_file(model_path), threads=1, codecs=("fp32",),
                            repeats=1, warmup=0, passes=1)  # fmt: skip
    write_json_atomic(tmp_path / "profile.json", profile)
    np.save(tmp_path / "x.npy", np.zeros((4, 1, 16), np.float32))
    result = splitinf(
        "plan", str(model_path), "--device", str(tmp_path / "profile.json"), "--server", str(tmp_path / "profile.json"),
        "--calibration", str(tmp_path / "x.npy"), "-o", str(tmp_path / "plan"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert ".npz" in result.stderr and "x.npy" in result.stderr, result.stderr


def test_split_with_an_npy_samples_file_exits_2_naming_the_npz_format(tmp_path: Path) -> None:
    model_path = tmp_path / "mlp.onnx"
    onnx.save_model(mlp(batch=1), model_path)
    np.save(tmp_path / "x.npy", np.zeros((1, 16), np.float32))
    result = splitinf("split", str(model_path), "--cut", "relu_0", "-o", str(tmp_path / "out"),
                      "--samples", str(tmp_path / "x.npy"))  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert ".npz" in result.stderr and "x.npy" in result.stderr, result.stderr


def test_any_other_environment_error_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import splitinf.cli.cuts
    from splitinf.cli import main

    def unreadable(args: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", "/models/big.onnx")

    monkeypatch.setattr(splitinf.cli.cuts, "run", unreadable)
    assert main(["cuts", "big.onnx"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "splitinf cuts: error: [Errno 13] Permission denied: '/models/big.onnx'"


def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``splitinf cuts big.onnx | head``: the reader is gone before the table is written."""
    model_path = tmp_path / "mlp.onnx"
    onnx.save_model(mlp(), model_path)
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    process = subprocess.Popen(
        [sys.executable, "-m", "splitinf", "cuts", str(model_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # like `head` after its lines
    stderr = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(timeout=120) == 141  # 128 + SIGPIPE, as `yes | head` reports
    assert stderr == ""
