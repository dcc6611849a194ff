"""The V2 protocol: generated code matches the .proto, wire compatibility, numpy <-> tensor conversion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from splitinf.errors import InputError, InvalidRequestError
from splitinf.protocol import (
    DATATYPE_TO_NUMPY,
    array_from_raw,
    datatype_of,
    decode_request_inputs,
    decode_response_outputs,
    encode_request,
    encode_response_outputs,
)
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol.tensors import EncodedInferResponse, encode_infer_response

ROOT = Path(__file__).resolve().parents[2]


def _fields(descriptor: Any) -> dict[str, tuple[int, int, bool, str, str]]:
    """Every field of a message and its nested messages: number, type, repeated, message type, oneof."""
    found = {}
    for field in descriptor.fields:
        sub = field.message_type.full_name if field.message_type else ""
        oneof = field.containing_oneof.name if field.containing_oneof else ""
        found[f"{descriptor.full_name}.{field.name}"] = (field.number, field.type, field.is_repeated, sub, oneof)
    for nested in descriptor.nested_types:
        found.update(_fields(nested))
    return found


def test_wire_definition_matches_the_stock_triton_client() -> None:
    """Every message and method we declare has the same numbers and types as tritonclient's own stubs."""
    from tritonclient.grpc import service_pb2 as triton

    ours_service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs_service = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours_service.full_name == theirs_service.full_name == "inference.GRPCInferenceService"
    for method in ours_service.methods:
        theirs = theirs_service.methods_by_name[method.name]
        assert method.input_type.full_name == theirs.input_type.full_name
        assert method.output_type.full_name == theirs.output_type.full_name
        assert (method.client_streaming, method.server_streaming) == (theirs.client_streaming, theirs.server_streaming)
    assert {m.name for m in ours_service.methods} >= {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "ModelStreamInfer",
    }  # fmt: skip
    for name, message in pb.DESCRIPTOR.message_types_by_name.items():
        # Ours may be a subset (newer Triton adds statistics fields); what we declare must be theirs.
        assert _fields(message).items() <= _fields(triton.DESCRIPTOR.message_types_by_name[name]).items(), name


def test_stock_triton_messages_decode_ours_byte_for_byte() -> None:
    from tritonclient.grpc import service_pb2 as triton

    request = encode_request(pb.ModelInferRequest(model_name="m", id="7"), {"x": np.arange(6, dtype=np.float32)})
    request.parameters["p"].uint64_param = 2**63
    theirs = triton.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.model_name == "m" and theirs.id == "7"
    assert theirs.inputs[0].datatype == "FP32" and list(theirs.inputs[0].shape) == [6]
    assert theirs.raw_input_contents[0] == np.arange(6, dtype=np.float32).tobytes()
    assert theirs.parameters["p"].uint64_param == 2**63
    assert theirs.SerializeToString() == request.SerializeToString()


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(sorted({d.newbyteorder("=").name for d in DATATYPE_TO_NUMPY.values()})),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    data=st.data(),
)
def test_raw_round_trip_for_every_datatype(dtype: str, shape: tuple[int, ...], data: st.DataObject) -> None:
    array = data.draw(hnp.arrays(dtype=np.dtype(dtype), shape=shape))
    request = encode_request(pb.ModelInferRequest(), {"t": array})
    decoded = decode_request_inputs(pb.ModelInferRequest.FromString(request.SerializeToString()))["t"]
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert decoded.tobytes() == np.ascontiguousarray(array).tobytes()  # bitwise, NaNs included


def test_wire_bytes_are_little_endian_and_row_major() -> None:
    array = np.array([[1, 2], [3, 4]], dtype=">i4").T  # big-endian, column-major view
    request = encode_request(pb.ModelInferRequest(), {"t": array})
    assert request.raw_input_contents[0] == np.array([[1, 3], [2, 4]], dtype="<i4").tobytes()


def test_response_outputs_round_trip() -> None:
    response = pb.ModelInferResponse()
    outputs = {"a": np.ones((2, 3), np.float16), "b": np.array([True, False])}
    encode_response_outputs(response, outputs)
    decoded = decode_response_outputs(pb.ModelInferResponse.FromString(response.SerializeToString()))
    assert decoded.keys() == outputs.keys()
    for name, value in outputs.items():
        np.testing.assert_array_equal(decoded[name], value)
        assert decoded[name].dtype == value.dtype


@settings(max_examples=150, deadline=None)
@given(
    outputs=st.lists(
        st.tuples(
            st.sampled_from(sorted(DATATYPE_TO_NUMPY)),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
        ),
        max_size=3,
    ),
    fields=st.fixed_dictionaries(
        {"model_name": st.text(max_size=8), "model_version": st.text(max_size=3), "id": st.text(max_size=8)}
    ),
    parameters=st.dictionaries(st.text(max_size=6), st.integers(-(2**63), 2**63 - 1), max_size=3),
    big_endian=st.booleans(),
    data=st.data(),
)
def test_encoded_response_is_the_bytes_protobuf_writes(
    outputs: list[tuple[str, tuple[int, ...]]],
    fields: dict[str, str],
    parameters: dict[str, int],
    big_endian: bool,
    data: st.DataObject,
) -> None:
    """EncodedInferResponse writes raw_output_contents itself: byte for byte what protobuf writes, and
    protobuf's parser reads it back (alone, and inside a ModelStreamInferResponse)."""
    arrays = {}
    for index, (datatype, shape) in enumerate(outputs):
        dtype = DATATYPE_TO_NUMPY[datatype]
        dtype = dtype.newbyteorder(">") if big_endian and dtype.itemsize > 1 else dtype
        array = data.draw(hnp.arrays(dtype=dtype, shape=shape))
        arrays[f"out{index}"] = array.T if array.ndim > 1 else array  # non-contiguous too

    def message() -> pb.ModelInferResponse:
        response = pb.ModelInferResponse(**fields)
        for key, value in parameters.items():
            response.parameters[key].int64_param = value
        return response

    reference = message()
    encode_response_outputs(reference, arrays)
    encoded = encode_infer_response(message(), arrays)
    wire = encoded.SerializeToString()
    assert wire == reference.SerializeToString()
    assert pb.ModelInferResponse.FromString(wire) == reference
    assert encoded.to_message() == reference
    stream = EncodedInferResponse.serialize_stream(encoded)
    outer = pb.ModelStreamInferResponse(infer_response=reference)
    assert pb.ModelStreamInferResponse.FromString(stream) == outer
    if len(parameters) <= 1:  # copying a map into the outer message may reorder it (map order is not wire format)
        assert stream == outer.SerializeToString()
    error = pb.ModelStreamInferResponse(error_message="INVALID_ARGUMENT: no")
    assert EncodedInferResponse.serialize_stream(error) == error.SerializeToString()


def test_encoded_response_holds_views_not_copies() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    encoded = encode_infer_response(pb.ModelInferResponse(), {"y": array})
    assert np.shares_memory(np.frombuffer(encoded.raw_output_contents[0], np.float32), array)


def test_typed_contents_are_accepted() -> None:
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="x", datatype="INT8", shape=[2, 2])
    tensor.contents.int_contents.extend([1, -2, 3, -4])
    decoded = decode_request_inputs(request)["x"]
    assert decoded.dtype == np.int8
    np.testing.assert_array_equal(decoded, [[1, -2], [3, -4]])


def test_wrong_raw_length_names_tensor_expected_and_got() -> None:
    with pytest.raises(InvalidRequestError, match=r"'x'.*10 bytes, expected 12 \(FP32 x shape \[3\]\)"):
        array_from_raw("x", "FP32", [3], b"\0" * 10)


def test_bytes_and_unknown_datatypes_are_refused_clearly() -> None:
    with pytest.raises(InvalidRequestError, match="BYTES/string tensors are not supported"):
        array_from_raw("s", "BYTES", [1], b"\0\0\0\0")
    with pytest.raises(InvalidRequestError, match="'q'.*'FP8'.*expected one of"):
        array_from_raw("q", "FP8", [1], b"\0")
    with pytest.raises(InputError, match="has no V2 datatype"):
        datatype_of(np.dtype("complex64"))


def test_negative_dimension_and_count_mismatch_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="negative dimension"):
        array_from_raw("x", "FP32", [-1, 2], b"")
    request = encode_request(pb.ModelInferRequest(), {"a": np.zeros(1, np.float32), "b": np.zeros(1, np.float32)})
    del request.raw_input_contents[1]
    with pytest.raises(InvalidRequestError, match="1 entries, expected one per input \\(2\\)"):
        decode_request_inputs(request)
