"""ruff and mypy are part of the suite, so CI enforces them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_tool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=600
    )


def test_ruff_is_clean() -> None:
    result = run_tool("ruff", "check", "splitinf", "tests", "benchmarks", "scripts")
    assert result.returncode == 0, result.stdout + result.stderr


def branches(count: int) -> str:
    """A function of cyclomatic complexity count + 1."""
    body = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(count))
    return f"def f(x: int) -> int:\n{body}    return -1\n"


def test_ruff_limits_complexity_to_15() -> None:
    def check(source: str) -> subprocess.CompletedProcess[str]:
        return run_tool("ruff", "check", "--stdin-filename", "benchmarks/complex.py", "-", stdin=source)

    assert check(branches(14)).returncode == 0
    too_complex = check(branches(15))
    assert "C901" in too_complex.stdout and "(16 > 15)" in too_complex.stdout, too_complex.stdout


def test_mypy_is_clean() -> None:
    result = run_tool("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
