"""The package surface: the CLI dispatcher and the error hierarchy."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

import splitinf.errors as errors
from splitinf.cli import main


def test_errors_all_lists_every_public_error() -> None:
    public = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == errors.__name__
    }
    assert set(errors.__all__) == public


def test_every_error_is_drawn_in_the_module_docstring() -> None:
    assert errors.__doc__ is not None
    for name in errors.__all__:
        assert name in errors.__doc__, f"{name} is missing from the hierarchy drawn in splitinf/errors.py"


def test_inference_errors_carry_distinct_grpc_statuses() -> None:
    codes = {cls.code for cls in errors.InferenceError.__subclasses__()}
    assert len(codes) == len(errors.InferenceError.__subclasses__())
    assert "OK" not in codes
    assert all(code in grpc.StatusCode.__members__ for code in codes)


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: splitinf" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error_without_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "splitinf", "no-such-command"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "invalid choice" in result.stderr
