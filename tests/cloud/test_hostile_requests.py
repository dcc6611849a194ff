"""Requests a hostile or broken client sends, against a real server on port 0 (issue 14, finding 6):
each is answered INVALID_ARGUMENT (or NOT_FOUND) with at most one log line, and the server keeps serving."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from splitinf.protocol import encode_request
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc
from splitinf.tools.testing.graphs import int8_identity, mlp

StartV2Server = Callable[..., Any]
TIMEOUT = 10.0
NOT_A_MESSAGE = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, length-delimited, length 4 GiB: truncated


@pytest.fixture
def channel(start_v2_server: StartV2Server) -> Iterator[grpc.Channel]:
    running = start_v2_server({"mlp": mlp(), "int8": int8_identity()})
    with grpc.insecure_channel(running.target) as channel:
        yield channel


def raw_call(channel: grpc.Channel, method: str) -> Callable[..., Any]:
    return channel.unary_unary(
        f"/inference.GRPCInferenceService/{method}", request_serializer=None, response_deserializer=None
    )


def status_of_call(call: Callable[..., Any], request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=TIMEOUT)
    return info.value.code(), str(info.value.details())


def test_undecodable_requests_are_invalid_argument_with_one_log_line(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    for method in ("ModelInfer", "ServerLive", "ModelMetadata"):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            code, details = status_of_call(raw_call(channel, method), NOT_A_MESSAGE)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert f"the {method} request is not a valid protobuf message" in details
        records = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(records) == 1 and records[0].exc_info is None, [r.getMessage() for r in records]
        assert "\n" not in records[0].getMessage()
    stream = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=None,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    good = encode_request(pb.ModelInferRequest(model_name="mlp"), {"x": np.ones((1, 16), np.float32)})
    answers = list(stream(iter([NOT_A_MESSAGE, good.SerializeToString()]), timeout=TIMEOUT))
    assert answers[0].error_message.startswith("INVALID_ARGUMENT: the ModelStreamInfer request is not a valid")
    assert not answers[1].error_message and answers[1].infer_response.model_name == "mlp"
    assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT).live


def test_a_huge_model_name_is_not_echoed(channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    name = "m" * 1_000_000
    request = encode_request(pb.ModelInferRequest(model_name=name), {"x": np.ones((1, 16), np.float32)})
    code, details = status_of_call(stub.ModelInfer, request)
    assert code == grpc.StatusCode.NOT_FOUND, details
    assert len(details) < 1024 and "(1000000 characters)" in details and "['int8', 'mlp']" in details
    code, details = status_of_call(stub.ModelMetadata, pb.ModelMetadataRequest(name="mlp", version="9" * 100_000))
    assert code == grpc.StatusCode.NOT_FOUND and len(details) < 1024


def test_raw_and_typed_contents_together_are_refused(channel: grpc.Channel) -> None:
    request = encode_request(pb.ModelInferRequest(model_name="mlp"), {"x": np.ones((1, 16), np.float32)})
    request.inputs[0].contents.fp32_contents.extend([2.0] * 16)
    code, details = status_of_call(pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "typed contents in a request with raw_input_contents" in details


def test_typed_values_out_of_their_datatype_range_are_refused(channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)

    def typed(values: list[int]) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name="int8")
        request.inputs.add(name="x", datatype="INT8", shape=[2]).contents.int_contents.extend(values)
        return request

    code, details = status_of_call(stub.ModelInfer, typed([1000, 1]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside INT8's range [-128, 127]" in details
    answer = stub.ModelInfer(typed([-128, 127]), timeout=TIMEOUT)
    assert np.frombuffer(answer.raw_output_contents[0], np.int8).tolist() == [-128, 127]
