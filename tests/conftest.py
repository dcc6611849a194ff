"""Shared fixtures: a V2 model repository and a real tail server on 127.0.0.1, port 0.

- ``start_v2_server(models=None, *, repo=None, **config)`` (factory fixture): writes
  ``models`` ({name: ModelProto}, default ``{"mlp": splitinf.tools.testing.graphs.mlp()}``) into a
  Triton-layout repository (``REPO/NAME/1/model.onnx``) unless ``repo`` is given, starts
  ``splitinf.cloud.app.create_server`` with ``ServerConfig(repo, port=0, metrics_port=None,
  **config)`` and returns a ``RunningV2Server`` (``port``, ``target``, ``server``, ``repo``).
  Every server it started is stopped at teardown.
- ``v2_server_port``: the port of a server holding the default ``mlp`` model.
- ``write_v2_repository``: the repository writer itself; ``tls_material``: throwaway certificates.

Use these as fixtures; do not ``import conftest`` (tests/tools/chaos has a conftest.py of its own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import pytest

from splitinf.cloud.app import TailServer, create_server
from splitinf.cloud.config import ServerConfig


@dataclass
class RunningV2Server:
    server: TailServer
    port: int
    repo: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def write_v2_repository(root: Path, models: Mapping[str, onnx.ModelProto], version: str = "1") -> Path:
    """Each model as ``root/NAME/VERSION/model.onnx`` with its manifest.json, as `splitinf split --repo` writes them."""
    from splitinf.offline.partition import write_to_repository

    for name, model in models.items():
        write_to_repository(model, root, name, version, manifest={"format": 1})
    return root


StartV2Server = Callable[..., RunningV2Server]


@pytest.fixture(name="write_v2_repository")
def write_v2_repository_fixture() -> Callable[..., Path]:
    """``write_v2_repository(root, {name: ModelProto}, version="1") -> root`` (Triton layout).

    A fixture, not an import: test folders with their own conftest.py make ``import conftest`` ambiguous.
    """
    return write_v2_repository


@pytest.fixture
def start_v2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartV2Server]:
    started: list[TailServer] = []

    def start(
        models: Mapping[str, onnx.ModelProto] | None = None, *, repo: Path | None = None, **config: Any
    ) -> RunningV2Server:
        if repo is None:
            from splitinf.tools.testing.graphs import mlp

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


@dataclass(frozen=True)
class TLSMaterial:
    """Throwaway PEM files: a CA, a server cert for localhost/127.0.0.1 and a client cert, both CA-signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def _openssl(*args: str, cwd: Path) -> None:
    import subprocess

    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed_cert(folder: Path, name: str, ca: str, extensions: str) -> None:
    key_args = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", *key_args, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder,
    )  # fmt: skip


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    """Certificates made with the openssl command line (the `cryptography` package is not installed)."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    key_args = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *key_args, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN={ca}", cwd=folder)  # fmt: skip
    _signed_cert(folder, "server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _signed_cert(folder, "client", "ca", "extendedKeyUsage=clientAuth\n")
    return TLSMaterial(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        other_ca=folder / "other-ca.pem",
    )
