"""The interop launcher's own errors and cache keys; no third-party server needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitinf.errors import ConfigError
from splitinf.tools.interop.servers import start_server
from splitinf.tools.interop.setup_envs import SERVERS, ServerEnv
from splitinf.tools.testing.plans import write_mlp_plan_dir


def test_environments_are_keyed_by_their_pins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPLITINF_INTEROP_CACHE", str(tmp_path))
    env = ServerEnv("mlserver", ("mlserver==1.7.1", "onnxruntime==1.32.0"))
    bumped = ServerEnv("mlserver", ("mlserver==1.7.2", "onnxruntime==1.32.0"))
    assert env.path.parent == tmp_path and env.path != bumped.path
    assert not env.ready  # nothing installed there


def test_a_missing_environment_names_the_command_that_makes_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPLITINF_INTEROP_CACHE", str(tmp_path / "empty"))
    plan_dir = write_mlp_plan_dir(tmp_path / "plan", cuts=("relu_1",), local=False)
    for kind in SERVERS:
        with pytest.raises(ConfigError, match=rf"setup_envs {kind}`"):
            start_server(kind, plan_dir, tmp_path / "work")
    with pytest.raises(
        ConfigError, match=r"unknown server 'triton'; choose one of \['mlserver', 'kserve', 'pytriton'\]"
    ):
        start_server("triton", plan_dir, tmp_path / "work")
