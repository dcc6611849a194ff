"""Shared fixtures: a V2 model repository and a real tail server on 127.0.0.1, port 0.

- ``start_v2_server(models=None, *, repo=None, **config)`` (factory fixture): writes
  ``models`` ({name: ModelProto}, default ``{"mlp": splitinf.testing.models.mlp()}``) into a
  Triton-layout repository (``REPO/NAME/1/model.onnx``) unless ``repo`` is given, starts
  ``splitinf.server.create_server`` with ``ServerConfig(repo, port=0, metrics_port=None,
  **config)`` and returns a ``RunningV2Server`` (``port``, ``target``, ``server``, ``repo``).
  Every server it started is stopped at teardown.
- ``v2_server_port``: the port of a server holding the default ``mlp`` model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import pytest

from splitinf.server import TailServer, create_server
from splitinf.server_config import ServerConfig


@dataclass
class RunningV2Server:
    server: TailServer
    port: int
    repo: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def write_v2_repository(root: Path, models: Mapping[str, onnx.ModelProto], version: str = "1") -> Path:
    for name, model in models.items():
        folder = root / name / version
        folder.mkdir(parents=True, exist_ok=True)
        onnx.save(model, folder / "model.onnx")
    return root


StartV2Server = Callable[..., RunningV2Server]


@pytest.fixture
def start_v2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartV2Server]:
    started: list[TailServer] = []

    def start(
        models: Mapping[str, onnx.ModelProto] | None = None, *, repo: Path | None = None, **config: Any
    ) -> RunningV2Server:
        if repo is None:
            from splitinf.testing.models import mlp

            repo = write_v2_repository(tmp_path_factory.mktemp("repo"), models or {"mlp": mlp()})
        settings: dict[str, Any] = {"port": 0, "metrics_port": None}
        settings.update(config)
        server, port = create_server(ServerConfig(repo=repo, **settings))
        started.append(server)
        return RunningV2Server(server, port, repo)

    yield start
    for server in started:
        server.stop(grace=0)


@pytest.fixture
def v2_server_port(start_v2_server: StartV2Server) -> int:
    return start_v2_server().port
