"""Tail identity without splitinf-only parameters, and the tail's compute time where no answer reports it.

Pure checks on protobuf messages and plan objects; the same checks against real third-party
servers are in tests/interop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitinf.contract.plan import Option, Plan, content_addressed_name
from splitinf.contract.tensors import TensorSpec
from splitinf.edge.config import DeviceConfig, load_device_config
from splitinf.edge.identity import TailIdentity, metadata_differences
from splitinf.errors import ConfigError, RemoteMismatchError
from splitinf.protocol import grpc_service_pb2 as pb

SHA = "ab" * 32
OPTION = Option(
    id="split:c1:fp16",
    kind="split",
    cut_id="c1",
    codec="fp16",
    head="device/heads/h.onnx",
    tail_model=content_addressed_name("m.c1.fp16", SHA),
    tail_sha256=SHA,
    wire=(TensorSpec("h", "float16", (1, 8)),),
    wire_bytes=16,
    tail_seconds=0.004,
)
FALLBACK = Option(id="fallback", kind="fallback", model="device/fallback.onnx")
PLAN = Plan(
    "m",
    "0" * 64,
    (TensorSpec("x", "float32", (1, 4)),),
    (TensorSpec("y", "float32", ("batch", 3)),),
    (OPTION, FALLBACK),
)
Tensor = pb.ModelMetadataResponse.TensorMetadata


def metadata(**changes: Any) -> pb.ModelMetadataResponse:
    fields: dict[str, Any] = {
        "name": OPTION.tail_model,
        "inputs": [Tensor(name="h", datatype="FP16", shape=[1, 8])],
        "outputs": [Tensor(name="y", datatype="FP32", shape=[-1, 3])],
    }
    fields.update(changes)
    return pb.ModelMetadataResponse(**fields)


class MetadataClient:
    def __init__(self, response: pb.ModelMetadataResponse):
        self.response = response
        self.calls = 0
        self.on_change: Any = None

    def model_metadata(self, name: str, timeout_s: float, version: str = "") -> pb.ModelMetadataResponse:
        self.calls += 1
        return self.response

    def watch_connectivity(self, callback: Any) -> None:
        self.on_change = callback


def test_content_addressed_names_carry_the_sha256_prefix() -> None:
    assert OPTION.tail_model == "m.c1.fp16.abababababab"


def test_matching_metadata_has_no_differences() -> None:
    assert metadata_differences(OPTION, PLAN, metadata()) == []
    # a server that fixes a dim the plan leaves open, or leaves open one the plan fixes, still matches
    loose = metadata(inputs=[Tensor(name="h", datatype="FP16", shape=[-1, 8])])
    assert metadata_differences(OPTION, PLAN, loose) == []


@pytest.mark.parametrize(
    ("changes", "difference"),
    [
        ({"name": "m.c1.fp16.000000000000"}, "named 'm.c1.fp16.000000000000'"),
        ({"inputs": [Tensor(name="g", datatype="FP16", shape=[1, 8])]}, r"inputs are \['g'\], the plan's are \['h'\]"),
        (
            {"inputs": [Tensor(name="h", datatype="FP32", shape=[1, 8])]},
            r"input 'h' is FP32\[1, 8\], the plan's is FP16",
        ),
        ({"outputs": [Tensor(name="y", datatype="FP32", shape=[1, 5])]}, r"output 'y' is FP32\[1, 5\].*\['\?', 3\]"),
        ({"outputs": [Tensor(name="y", datatype="FP32", shape=[3])]}, r"output 'y' is FP32\[3\]"),
    ],
)
def test_each_difference_is_named(changes: dict[str, Any], difference: str) -> None:
    identity = TailIdentity(PLAN, "metadata", MetadataClient(metadata(**changes)))
    with pytest.raises(RemoteMismatchError, match=difference):
        identity.verify(OPTION, timeout_s=1)
    assert not identity.is_verified(OPTION)


def test_metadata_is_read_once_per_connection_and_again_after_a_reconnect() -> None:
    client = MetadataClient(metadata())
    identity = TailIdentity(PLAN, "metadata", client)
    identity.verify(OPTION, timeout_s=1)
    identity.verify(OPTION, timeout_s=1)
    assert client.calls == 1 and identity.is_verified(OPTION)
    client.on_change(True)  # still connected
    assert identity.is_verified(OPTION)
    client.on_change(False)  # the connection was lost: whatever answers next may be another deployment
    assert not identity.is_verified(OPTION)
    identity.verify(OPTION, timeout_s=1)
    assert client.calls == 2


def test_a_server_that_declares_no_tensors_is_taken_at_its_name() -> None:
    identity = TailIdentity(PLAN, "metadata", MetadataClient(metadata(inputs=[], outputs=[])))
    identity.verify(OPTION, timeout_s=1)
    assert identity.is_verified(OPTION)


def test_sha256_parameter_is_a_stronger_check_where_present() -> None:
    outputs = {"y": np.zeros((1, 3), np.float32)}
    relaxed = TailIdentity(PLAN, "metadata", MetadataClient(metadata()))
    relaxed.check_answer(OPTION, outputs, None)
    relaxed.check_answer(OPTION, outputs, SHA)
    with pytest.raises(RemoteMismatchError, match="has sha256 cd"):
        relaxed.check_answer(OPTION, outputs, "cd" * 32)
    strict = TailIdentity(PLAN, "sha256", MetadataClient(metadata()))
    strict.verify(OPTION, timeout_s=1)  # no metadata call needed: every answer proves itself
    strict.check_answer(OPTION, outputs, SHA)
    with pytest.raises(RemoteMismatchError, match="carries no splitinf_model_sha256"):
        strict.check_answer(OPTION, outputs, None)
    with pytest.raises(RemoteMismatchError, match=r"output 'y': shape \[1, 4\] does not match"):
        relaxed.check_answer(OPTION, {"y": np.zeros((1, 4), np.float32)}, None)


def test_tail_identity_is_a_device_config_key(tmp_path: Path) -> None:
    assert DeviceConfig().tail_identity == "metadata"
    path = tmp_path / "device.toml"
    path.write_text('tail_identity = "sha256"\n')
    assert load_device_config(path).tail_identity == "sha256"
    path.write_text('tail_identity = "name"\n')
    with pytest.raises(ConfigError, match=r"tail_identity must be one of \['metadata', 'sha256'\]"):
        load_device_config(path)
