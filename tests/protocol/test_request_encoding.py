"""The device's one-copy request encoding (EncodedInferRequest) is byte for byte what protobuf writes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol.tensors import (
    DATATYPE_TO_NUMPY,
    decode_request_inputs,
    encode_infer_request,
    encode_request,
    parse_infer_request,
)

WIRE_DTYPES = [dtype.newbyteorder("=") for dtype in DATATYPE_TO_NUMPY.values()]

arrays = st.sampled_from(WIRE_DTYPES).flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
)
# a non-contiguous view (every other column) must encode as its values, not its buffer
strided = hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(2, 8))).map(lambda a: a[:, ::2])


def _request() -> st.SearchStrategy[pb.ModelInferRequest]:
    def build(name: str, version: str, request_id: str, params: dict[str, int]) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=name, model_version=version, id=request_id)
        for key, value in params.items():
            request.parameters[key].int64_param = value
        return request

    text = st.text(max_size=12)
    return st.builds(
        build, text, text, text, st.dictionaries(st.text(max_size=6), st.integers(-(2**63), 2**63 - 1), max_size=1)
    )


@settings(max_examples=200, deadline=None)
@given(
    request=_request(),
    tensors=st.lists(st.one_of(arrays, strided), max_size=4),
    outputs=st.lists(st.text(max_size=5), max_size=2),
)
def test_encoded_requests_are_byte_identical_to_protobuf(
    request: pb.ModelInferRequest, tensors: list[np.ndarray], outputs: list[str]
) -> None:
    inputs = {f"t{i}": array for i, array in enumerate(tensors)}
    reference = pb.ModelInferRequest()
    reference.CopyFrom(request)
    expected = encode_request(reference, inputs, outputs).SerializeToString()
    encoded = encode_infer_request(request, inputs, outputs)
    assert encoded.SerializeToString() == expected
    assert encoded.ByteSize() == len(expected)
    assert encoded.to_message().SerializeToString() == expected
    decoded = decode_request_inputs(parse_infer_request(expected))
    for name, array in inputs.items():
        np.testing.assert_array_equal(decoded[name], array)


def test_contiguous_tensors_are_views_of_the_arrays_not_copies() -> None:
    array = np.arange(1000, dtype=np.float32).reshape(10, 100)
    encoded = encode_infer_request(pb.ModelInferRequest(model_name="m"), {"x": array})
    (view,) = encoded.raw_input_contents
    assert np.shares_memory(np.frombuffer(view, dtype=np.float32), array)
