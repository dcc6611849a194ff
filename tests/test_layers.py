"""The tree is the architecture: import-linter's contracts hold, and the device and server run without onnx."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from splitinf.tools.testing.plans import write_mlp_plan_dir

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_import_linter_contracts_are_kept() -> None:
    done = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken", done.stdout), done.stdout


def _env_without_onnx(tmp_path: Path) -> dict[str, str]:
    """PYTHONPATH with an ``onnx`` package first on the path whose import fails, as on a Pi without onnx."""
    blocker = tmp_path / "no-onnx" / "onnx"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("onnx is not installed on this device (test blocker)")\n')
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker.parent), env.get("PYTHONPATH", "")])
    return env


def test_the_blocker_really_blocks_onnx(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import onnx"], env=_env_without_onnx(tmp_path), capture_output=True, text=True
    )
    assert done.returncode != 0 and "test blocker" in done.stderr


def test_serve_and_run_work_where_onnx_cannot_be_imported(tmp_path: Path) -> None:
    plan = write_mlp_plan_dir(tmp_path / "plan", cuts=("relu_1",))
    env = _env_without_onnx(tmp_path)
    cli = [sys.executable, "-m", "splitinf"]
    serve = subprocess.Popen(
        [*cli, "serve", "--repo", str(plan / "server"), "--port", "0", "--metrics-port", "-1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline()
        match = re.search(r"serving on [\d.]+:(\d+)", line)
        assert match, line + (serve.stderr.read() if serve.poll() is not None and serve.stderr else "")
        x = np.random.default_rng(3).standard_normal((1, 16)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        done = subprocess.run(
            [
                *cli,
                "run",
                "--plan",
                str(plan),
                "--server",
                f"127.0.0.1:{match.group(1)}",
                "--json",
                str(tmp_path / "x.npy"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert '"kind": "split"' in done.stdout, done.stdout
    finally:
        serve.terminate()
        serve.wait(timeout=30)
