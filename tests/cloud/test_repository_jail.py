"""The repository is a jail: a served model opens nothing outside its version folder (issue 14, findings 1-2).

Each test builds a repository by hand and starts a real server on port 0 (or expects it to refuse).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from splitinf.cloud.app import create_server
from splitinf.cloud.config import ServerConfig
from splitinf.contract.files import sha256_file
from splitinf.contract.manifest import part_entry
from splitinf.contract.plandir import external_data_locations
from splitinf.errors import ConfigError, IntegrityError
from splitinf.protocol import encode_request
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc
from splitinf.protocol.tensors import decode_response_outputs

StartV2Server = Callable[..., Any]

SECRET = np.array([7, 7, 7, 7], np.float32)  # what a leaking server would add to the input


def add_w(location: str | None = None, n: int = 4) -> onnx.ModelProto:
    """y = x + w; with ``location``, w is external data at that location (nothing written)."""
    if location is None:
        w = onnx.numpy_helper.from_array(np.arange(n, dtype=np.float32), "w")
    else:
        w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[n], data_location=TensorProto.EXTERNAL)
        for key, value in (("location", location), ("offset", "0"), ("length", str(4 * n))):
            w.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "add_w",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def sign(version_dir: Path) -> None:
    """manifest.json for model.onnx and its data file, as `splitinf split --repo` writes it."""
    tail = part_entry(version_dir / "model.onnx")
    (version_dir / "manifest.json").write_text(json.dumps({"format": 1, "parts": {"tail": tail}}))


def with_external_data(version_dir: Path) -> Path:
    """``add_w`` saved as splitinf saves a >2 GiB tail: its weights in model.onnx.data beside it."""
    version_dir.mkdir(parents=True)
    onnx.save_model(
        add_w(), str(version_dir / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
        size_threshold=0,
    )  # fmt: skip
    return version_dir


def infer(port: int, name: str = "m") -> np.ndarray:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = encode_request(pb.ModelInferRequest(model_name=name), {"x": np.zeros(4, np.float32)})
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    return decode_response_outputs(response)["y"]


def serve(repo: Path, **config: Any) -> Any:
    return create_server(ServerConfig(repo=repo, port=0, metrics_port=None, **config))


def test_external_data_beside_the_model_loads_and_serves(start_v2_server: StartV2Server, tmp_path: Path) -> None:
    version = with_external_data(tmp_path / "m" / "1")
    sign(version)
    running = start_v2_server(repo=tmp_path)
    np.testing.assert_array_equal(infer(running.port), np.arange(4, dtype=np.float32))


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_external_data_outside_the_version_folder_is_refused_before_it_is_read(tmp_path: Path, where: str) -> None:
    (tmp_path / "secret.bin").write_bytes(SECRET.tobytes())
    location = "../../../secret.bin" if where == "parent" else str(tmp_path / "secret.bin")
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    onnx.save(add_w(location), repo / "m" / "1" / "model.onnx")
    sign(repo / "m" / "1")
    assert external_data_locations(repo / "m" / "1" / "model.onnx") == {location}
    with pytest.raises(IntegrityError, match=r"names external data .*secret.bin.* outside its version"):
        serve(repo)


def test_a_data_file_symlinked_out_of_the_version_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(SECRET.tobytes())
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    onnx.save(add_w("model.onnx.data"), repo / "m" / "1" / "model.onnx")
    (repo / "m" / "1" / "model.onnx.data").symlink_to(tmp_path / "secret.bin")
    sign(repo / "m" / "1")
    with pytest.raises(IntegrityError, match="names external data 'model.onnx.data' outside its version folder"):
        serve(repo)


@pytest.mark.parametrize("link", ["model folder", "version folder", "model.onnx"])
def test_symlinks_leaving_the_repository_are_refused(tmp_path: Path, link: str) -> None:
    outside = tmp_path / "outside" / "m" / "1"
    outside.mkdir(parents=True)
    onnx.save(add_w(), outside / "model.onnx")
    sign(outside)
    repo = tmp_path / "repo"
    repo.mkdir()
    if link == "model folder":
        (repo / "m").symlink_to(outside.parent)
    elif link == "version folder":
        (repo / "m").mkdir()
        (repo / "m" / "1").symlink_to(outside)
    else:
        (repo / "m" / "1").mkdir(parents=True)
        (repo / "m" / "1" / "model.onnx").symlink_to(outside / "model.onnx")
        sign(repo / "m" / "1")
    with pytest.raises(ConfigError, match="symlink to .*outside the repository"):
        serve(repo)


def test_a_model_without_manifest_is_refused_unless_the_repository_is_unsigned(
    start_v2_server: StartV2Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    onnx.save(add_w(), tmp_path / "m" / "1" / "model.onnx")
    with pytest.raises(IntegrityError, match="no manifest.json beside it .* allow_unsigned = true"):
        serve(tmp_path)
    with caplog.at_level(logging.WARNING, logger="splitinf.cloud.app"):
        running = start_v2_server(repo=tmp_path, allow_unsigned=True)
    assert "allow_unsigned" in caplog.text
    np.testing.assert_array_equal(infer(running.port), np.arange(4, dtype=np.float32))


def test_the_manifest_covers_the_external_data(tmp_path: Path) -> None:
    version = with_external_data(tmp_path / "m" / "1")
    manifest = {"parts": {"tail": {"file": "model.onnx", "sha256": sha256_file(version / "model.onnx")}}}
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match=r"external data model.onnx.data is not the one .* lists"):
        serve(tmp_path)
    sign(version)
    (version / "model.onnx.data").write_bytes(SECRET.tobytes())  # changed weights, same size
    with pytest.raises(IntegrityError, match=r"model.onnx.data: its sha256 is .* but .* expects"):
        serve(tmp_path)


def test_two_folders_naming_one_version_are_refused(tmp_path: Path) -> None:
    for version in ("1", "01"):
        (tmp_path / "m" / version).mkdir(parents=True)
        onnx.save(add_w(), tmp_path / "m" / version / "model.onnx")
        sign(tmp_path / "m" / version)
    with pytest.raises(ConfigError, match="version folders '01' and '1' are the same version 1"):
        serve(tmp_path)
