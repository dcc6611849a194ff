"""The server's zero-copy request path: ``parse_infer_request`` against protobuf's own parser, and the
handler table that puts it on the wire."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from splitinf.cloud.errors import UndecodableRequest
from splitinf.cloud.servicer import InferenceServicer, inference_method_handlers
from splitinf.protocol import encode_request
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol.services import SERVICE_NAME
from splitinf.protocol.tensors import (
    ParsedInferRequest,
    decode_request_inputs,
    decode_response_outputs,
    parse_infer_request,
)
from splitinf.tools.testing.graphs import mlp

TIMEOUT = 10.0
StartV2Server = Callable[..., Any]
names = st.text(alphabet="abcxyz_01", min_size=1, max_size=6)


def _without_raw(message: pb.ModelInferRequest) -> pb.ModelInferRequest:
    copy = pb.ModelInferRequest()
    copy.CopyFrom(message)
    copy.ClearField("raw_input_contents")
    return copy


def _parts(request: pb.ModelInferRequest) -> list[list[bytes]]:
    """The request's top-level fields, each serialized on its own, grouped by field (in field order)."""
    groups = []
    for field, value in request.ListFields():
        parts: list[bytes] = []
        groups.append(parts)
        values = value if field.is_repeated else [value]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            values = [{key: value[key]} for key in value]
        for item in values:
            single = pb.ModelInferRequest()
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                getattr(single, field.name)[next(iter(item))].CopyFrom(next(iter(item.values())))
            elif field.is_repeated and field.message_type is not None:
                getattr(single, field.name).add().CopyFrom(item)
            elif field.is_repeated:
                getattr(single, field.name).append(item)
            else:
                setattr(single, field.name, item)
            parts.append(single.SerializeToString())
    return groups


def _interleave(groups: list[list[bytes]], rng: random.Random) -> bytes:
    """The fields in a random order that keeps each repeated field's own order (a valid, equal message)."""
    queues = [list(group) for group in groups if group]
    out = []
    while queues:
        queue = rng.choice(queues)
        out.append(queue.pop(0))
        if not queue:
            queues.remove(queue)
    return b"".join(out)


@st.composite
def wire_requests(draw: st.DrawFn) -> tuple[bytes, pb.ModelInferRequest]:
    request = pb.ModelInferRequest(model_name=draw(names), model_version=draw(st.sampled_from(["", "1", "12"])))
    request.id = draw(st.sampled_from(["", "req-7"]))
    for key in draw(st.lists(names, max_size=2, unique=True)):
        request.parameters[key].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    for name in draw(st.lists(names, max_size=3, unique=True)):
        shape = draw(st.lists(st.integers(0, 300), max_size=3))
        request.inputs.add(name=name, datatype="UINT8", shape=shape)
        request.raw_input_contents.append(draw(st.binary(max_size=300)))
    for name in draw(st.lists(names, max_size=2)):
        request.outputs.add(name=name)
    return _interleave(_parts(request), random.Random(draw(st.integers(0, 2**16)))), request


@settings(max_examples=150, deadline=None)
@given(wire_requests())
def test_parse_matches_protobuf_on_any_field_order(case: tuple[bytes, pb.ModelInferRequest]) -> None:
    data, request = case
    parsed = parse_infer_request(data)
    reference = pb.ModelInferRequest.FromString(data)
    assert parsed.message == _without_raw(reference) == _without_raw(request)
    assert [bytes(raw) for raw in parsed.raw_input_contents] == list(reference.raw_input_contents)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_malformed_bytes_fail_exactly_as_protobuf_does(data: st.DataObject) -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    valid = encode_request(pb.ModelInferRequest(model_name="m", id="i"), {"x": x}).SerializeToString()
    cut = data.draw(st.integers(0, len(valid)))
    garbage = data.draw(st.binary(max_size=40))
    for wire in (valid[:cut], valid[:cut] + garbage, garbage):
        try:
            reference = pb.ModelInferRequest.FromString(wire)
        except DecodeError:
            with pytest.raises(DecodeError):
                parse_infer_request(wire)
            continue
        parsed = parse_infer_request(wire)
        assert parsed.message == _without_raw(reference)
        assert [bytes(raw) for raw in parsed.raw_input_contents] == list(reference.raw_input_contents)


def test_groups_and_unknown_fields_take_protobuf_path_with_the_same_result() -> None:
    x = np.ones((1, 16), np.float32)
    base = encode_request(pb.ModelInferRequest(model_name="mlp"), {"x": x}).SerializeToString()
    unknown_varint = bytes([(15 << 3) | 0, 5])
    unknown_fixed = bytes([(13 << 3) | 1]) + bytes(8) + bytes([(12 << 3) | 5]) + bytes(4)
    group = bytes([(14 << 3) | 3, (14 << 3) | 4])  # an empty (deprecated) group: the scanner hands it over
    for wire in (unknown_varint + base, base + unknown_fixed, group + base):
        parsed = parse_infer_request(wire)
        reference = pb.ModelInferRequest.FromString(wire)
        assert parsed.message == _without_raw(reference)
        np.testing.assert_array_equal(decode_request_inputs(parsed)["x"], x)


def test_decoded_inputs_are_views_of_the_received_bytes_not_copies() -> None:
    x = np.random.default_rng(0).standard_normal((1, 256, 28, 28)).astype(np.float32)
    data = encode_request(pb.ModelInferRequest(model_name="m"), {"x": x}).SerializeToString()
    received = np.frombuffer(data, np.uint8)
    array = decode_request_inputs(parse_infer_request(data))["x"]
    np.testing.assert_array_equal(array, x)
    assert np.shares_memory(array, received)
    assert not array.flags.writeable  # nobody can change the client's bytes under another reader


def test_handler_table_serves_every_method_of_the_service() -> None:
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert SERVICE_NAME == service.full_name
    handlers = inference_method_handlers(InferenceServicer.__new__(InferenceServicer))
    assert set(handlers) == {method.name for method in service.methods}
    for method in service.methods:
        handler = handlers[method.name]
        assert (handler.request_streaming, handler.response_streaming) == (
            method.client_streaming,
            method.server_streaming,
        ), method.name
    wire = encode_request(pb.ModelInferRequest(model_name="mlp"), {"x": np.ones(2, np.float32)}).SerializeToString()
    for name in ("ModelInfer", "ModelStreamInfer"):
        parse = handlers[name].request_deserializer
        assert isinstance(parse(wire), ParsedInferRequest)  # the zero-copy parse
        assert isinstance(parse(b"\x0a\xff"), UndecodableRequest)


def test_server_answers_requests_in_any_field_order_and_survives_garbage(start_v2_server: StartV2Server) -> None:
    running = start_v2_server()
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    request = encode_request(pb.ModelInferRequest(model_name="mlp", id="abc"), {"x": x})
    wire = b"".join(part for group in reversed(_parts(request)) for part in group)  # raw contents first
    assert parse_infer_request(wire).message.model_name == "mlp"
    expected = ort.InferenceSession(mlp().SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    with grpc.insecure_channel(running.target) as channel:
        call = channel.unary_unary(f"/{SERVICE_NAME}/ModelInfer")
        response = pb.ModelInferResponse.FromString(call(wire, timeout=TIMEOUT))
        assert response.id == "abc"
        np.testing.assert_allclose(decode_response_outputs(response)["y"], expected[0], rtol=1e-6)
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff", timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # grpcio alone answers INTERNAL
        again = pb.ModelInferResponse.FromString(call(request.SerializeToString(), timeout=TIMEOUT))
        np.testing.assert_allclose(decode_response_outputs(again)["y"], expected[0], rtol=1e-6)


def test_servicer_still_takes_plain_protobuf_requests() -> None:
    """grpcio-testing and direct callers hand the servicer a ModelInferRequest, not the zero-copy parse."""
    request = encode_request(pb.ModelInferRequest(model_name="m"), {"x": np.ones((1, 2), np.float32)})
    parsed = parse_infer_request(request.SerializeToString())
    assert isinstance(parsed, ParsedInferRequest)
    for form in (request, parsed):
        np.testing.assert_array_equal(decode_request_inputs(form)["x"], np.ones((1, 2), np.float32))
