"""numpy <-> Open Inference Protocol (V2) tensors; pure functions, no I/O.

Tensors travel in ``raw_input_contents`` / ``raw_output_contents``: the array's bytes,
row-major, little-endian, one entry per tensor in the order of ``inputs``/``outputs``.
Decoding also accepts the typed ``contents`` fields some V2 clients send. ``BYTES``
(variable-length strings) is refused: split tensors are always numeric.

Decoding errors are ``InvalidRequestError`` (INVALID_ARGUMENT on the server); each
message names the tensor, what was expected and what came.

``parse_infer_request`` is the server's zero-copy parse: protobuf copies every bytes field
twice (into the parsed message, then into a new ``bytes`` on access), which for a 0.8 MB
tensor cost more than the rest of the server's per-call work together.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitinf.errors import InputError, InvalidRequestError
from splitinf.protocol import grpc_service_pb2 as pb

__all__ = [
    "DATATYPE_TO_NUMPY",
    "EncodedInferRequest",
    "EncodedInferResponse",
    "ParsedInferRequest",
    "array_from_raw",
    "datatype_of",
    "decode_request_inputs",
    "decode_response_outputs",
    "encode_infer_request",
    "encode_infer_response",
    "encode_request",
    "encode_response_outputs",
    "numpy_dtype",
    "parse_infer_request",
]

# V2 datatype -> numpy dtype (explicitly little-endian: the wire byte order).
DATATYPE_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_NUMPY_TO_DATATYPE = {dtype.newbyteorder("=").name: name for name, dtype in DATATYPE_TO_NUMPY.items()}

# Which InferTensorContents field carries each datatype (for clients that do not send raw bytes).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


# The same table keyed by dtype objects: a dict lookup instead of dtype.name per call.
_DTYPE_TO_DATATYPE: dict[np.dtype[Any], str] = {
    dtype.newbyteorder("="): name for name, dtype in DATATYPE_TO_NUMPY.items()
}


def datatype_of(dtype: np.dtype[Any] | type | str) -> str:
    """The V2 datatype string for a numpy dtype; ``InputError`` for one V2 cannot carry."""
    if isinstance(dtype, np.dtype):
        found = _DTYPE_TO_DATATYPE.get(dtype)
        if found is not None:
            return found
    name = np.dtype(dtype).name
    try:
        return _NUMPY_TO_DATATYPE[name]
    except KeyError:
        raise InputError(f"numpy dtype {name!r} has no V2 datatype; use one of {sorted(_NUMPY_TO_DATATYPE)}") from None


def numpy_dtype(datatype: str, tensor: str = "?") -> np.dtype[Any]:
    """The numpy dtype of a V2 datatype; ``InvalidRequestError`` naming the tensor when unsupported."""
    try:
        return DATATYPE_TO_NUMPY[datatype]
    except KeyError:
        hint = " (BYTES/string tensors are not supported by splitinf)" if datatype == "BYTES" else ""
        raise InvalidRequestError(
            f"tensor {tensor!r}: datatype {datatype!r} is not supported{hint}; expected one of "
            f"{', '.join(DATATYPE_TO_NUMPY)}"
        ) from None


def _checked_shape(tensor: str, shape: Sequence[int]) -> tuple[int, ...]:
    dims = tuple(int(dim) for dim in shape)
    if dims and min(dims) < 0:
        raise InvalidRequestError(f"tensor {tensor!r}: shape {list(shape)} has a negative dimension")
    return dims


# On a little-endian host the wire dtypes are the native ones: arrays need no byte swap.
_NATIVE_IS_WIRE = sys.byteorder == "little"


def array_from_raw(tensor: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> np.ndarray:
    """Decode one raw tensor (a view, not a copy), checking that its byte length matches datatype and shape."""
    dtype = numpy_dtype(datatype, tensor)
    dims = _checked_shape(tensor, shape)
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidRequestError(
            f"tensor {tensor!r}: raw contents are {len(raw)} bytes, expected {expected} "
            f"({datatype} x shape {list(dims)})"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(dims)
    return array if _NATIVE_IS_WIRE else array.astype(dtype.newbyteorder("="))


def _array_from_contents(tensor: str, datatype: str, shape: Sequence[int], contents: Any) -> np.ndarray:
    dtype = numpy_dtype(datatype, tensor)
    dims = _checked_shape(tensor, shape)
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidRequestError(f"tensor {tensor!r}: datatype {datatype} can only travel in raw_input_contents")
    values = getattr(contents, field)
    count = math.prod(dims)
    if len(values) != count:
        raise InvalidRequestError(
            f"tensor {tensor!r}: contents.{field} holds {len(values)} values, expected {count} (shape {list(dims)})"
        )
    array = np.asarray(values)
    if dtype.kind in "iu" and array.size:
        limits = np.iinfo(dtype)
        if array.min() < limits.min or array.max() > limits.max:
            raise InvalidRequestError(
                f"tensor {tensor!r}: contents.{field} holds values in [{array.min()}, {array.max()}], outside "
                f"{datatype}'s range [{limits.min}, {limits.max}]"
            )
    return array.astype(dtype.newbyteorder("=")).reshape(dims)


def _raw_bytes(array: np.ndarray) -> bytes:
    wire = DATATYPE_TO_NUMPY[datatype_of(array.dtype)]
    return np.ascontiguousarray(array, dtype=wire).tobytes()


def encode_request(
    request: pb.ModelInferRequest,
    inputs: Mapping[str, np.ndarray],
    outputs: Iterable[str] = (),
) -> pb.ModelInferRequest:
    """Fill ``request`` with ``inputs`` as raw contents and the requested output names (a protobuf
    message; :func:`encode_infer_request` is the same without copying the tensors into it)."""
    encoded = encode_infer_request(request, inputs, outputs)
    request.raw_input_contents.extend(bytes(raw) for raw in encoded.raw_input_contents)
    return request


@dataclass(frozen=True, slots=True)
class ParsedInferRequest:
    """A ``ModelInferRequest`` whose raw tensor bytes were not copied.

    ``message`` holds every field but ``raw_input_contents``; ``raw_input_contents`` are
    memoryviews into the received buffer, in order.
    """

    message: pb.ModelInferRequest
    raw_input_contents: Sequence[memoryview]


_RAW_INPUT_CONTENTS_TAG = (7 << 3) | 2  # ModelInferRequest.raw_input_contents: field 7, length-delimited


class _NotPlain(Exception):
    """The buffer is not a plain sequence of fields (or is malformed): let protobuf judge it."""


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise _NotPlain
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def parse_infer_request(data: bytes) -> ParsedInferRequest:
    """Parse a serialized ``ModelInferRequest`` without copying its raw tensor bytes.

    Walks the top-level fields (protobuf wire format): ``raw_input_contents`` entries become
    memoryviews into ``data``; all other fields, in their order, are parsed by protobuf (a
    message of concatenated fields is the same message). Anything unusual (groups, bad
    varints, truncation) goes to protobuf's own parser, so malformed input fails exactly as
    with ``ModelInferRequest.FromString``.
    """
    view = memoryview(data)
    raw: list[memoryview] = []
    kept: list[memoryview] = []
    position = kept_from = 0
    end = len(data)
    try:
        while position < end:
            field_start = position
            tag = data[position]  # one byte for fields 1-15, which is every field of ModelInferRequest
            position += 1
            if tag >= 0x80:
                tag, position = _varint(data, field_start)
            wire_type = tag & 7
            if wire_type == 2:
                length = data[position] if position < end else 0x80
                if length < 0x80:
                    position += 1
                else:
                    length, position = _varint(data, position)
                if tag == _RAW_INPUT_CONTENTS_TAG and position + length <= end:
                    kept.append(view[kept_from:field_start])
                    raw.append(view[position : position + length])
                    kept_from = position + length
                position += length
            elif wire_type == 0:
                _, position = _varint(data, position)
            elif wire_type == 1:
                position += 8
            elif wire_type == 5:
                position += 4
            else:
                raise _NotPlain
            if tag >> 3 == 0 or position > end:
                raise _NotPlain
    except _NotPlain:
        message = pb.ModelInferRequest.FromString(data)
        contents = [memoryview(entry) for entry in message.raw_input_contents]
        message.ClearField("raw_input_contents")
        return ParsedInferRequest(message, contents)
    kept.append(view[kept_from:])
    rest = kept[0] if len(kept) == 1 else b"".join(kept)
    return ParsedInferRequest(pb.ModelInferRequest.FromString(rest), raw)


def decode_request_inputs(request: pb.ModelInferRequest | ParsedInferRequest) -> dict[str, np.ndarray]:
    """The request's inputs by name, from raw contents or typed contents (raw ones as views, not copies)."""
    raw: Sequence[bytes | memoryview]
    if isinstance(request, ParsedInferRequest):
        raw, request = request.raw_input_contents, request.message
    else:
        raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequestError(
            f"raw_input_contents has {len(raw)} entries, expected one per input ({len(request.inputs)})"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in arrays:
            raise InvalidRequestError(f"tensor {tensor.name!r} appears twice in the request")
        if raw and tensor.HasField("contents"):
            raise InvalidRequestError(
                f"tensor {tensor.name!r} has typed contents in a request with raw_input_contents; "
                "the protocol allows one or the other"
            )
        if raw:
            arrays[tensor.name] = array_from_raw(tensor.name, tensor.datatype, tensor.shape, raw[index])
        elif tensor.HasField("contents"):
            arrays[tensor.name] = _array_from_contents(tensor.name, tensor.datatype, tensor.shape, tensor.contents)
        else:
            raise InvalidRequestError(f"tensor {tensor.name!r} has no data: send raw_input_contents or contents")
    return arrays


def encode_response_outputs(response: pb.ModelInferResponse, outputs: Mapping[str, np.ndarray]) -> None:
    """Append ``outputs`` to ``response`` as raw output contents."""
    for name, value in outputs.items():
        array = np.asarray(value)
        response.outputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
        response.raw_output_contents.append(_raw_bytes(array))


_RAW_OUTPUT_CONTENTS_TAG = b"\x32"  # ModelInferResponse.raw_output_contents: field 6, length-delimited
_STREAM_INFER_RESPONSE_TAG = b"\x12"  # ModelStreamInferResponse.infer_response: field 2, length-delimited


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class EncodedInferResponse:
    """A ``ModelInferResponse`` whose raw output tensors were not copied into protobuf.

    ``message`` holds every field but ``raw_output_contents``; ``raw_output_contents`` are
    views of the output arrays' bytes, in the order of ``message.outputs``. Protobuf would
    copy each tensor three times (``tobytes``, into the message, into the serialized
    bytes: ~50 us per 0.8 MB); ``SerializeToString`` copies it once. Its bytes are what
    protobuf writes for the whole message: known fields in field-number order, and
    ``raw_output_contents`` (field 6) is the last.
    """

    message: pb.ModelInferResponse
    raw_output_contents: Sequence[memoryview]

    def _chunks(self) -> list[bytes | memoryview]:
        chunks: list[bytes | memoryview] = [self.message.SerializeToString()]
        for raw in self.raw_output_contents:
            chunks += [_RAW_OUTPUT_CONTENTS_TAG, _varint_bytes(raw.nbytes), raw]
        return chunks

    def SerializeToString(self) -> bytes:  # protobuf's name, so code that serializes messages takes this too
        return b"".join(self._chunks())

    def serialize_as_stream_response(self) -> bytes:
        """The wire bytes of ``ModelStreamInferResponse(infer_response=<this>)``."""
        chunks = self._chunks()
        size = sum(len(chunk) if isinstance(chunk, bytes) else chunk.nbytes for chunk in chunks)
        return b"".join([_STREAM_INFER_RESPONSE_TAG, _varint_bytes(size), *chunks])

    def to_message(self) -> pb.ModelInferResponse:
        """The whole response as a protobuf message (copies the tensors)."""
        response = pb.ModelInferResponse()
        response.CopyFrom(self.message)
        response.raw_output_contents.extend(bytes(raw) for raw in self.raw_output_contents)
        return response

    @staticmethod
    def serialize(response: EncodedInferResponse | pb.ModelInferResponse) -> bytes:
        """gRPC response serializer for ModelInfer: either form."""
        return response.SerializeToString()

    @staticmethod
    def serialize_stream(response: EncodedInferResponse | pb.ModelStreamInferResponse) -> bytes:
        """gRPC response serializer for ModelStreamInfer: an encoded response (success) or a
        ``ModelStreamInferResponse`` (an error message)."""
        if isinstance(response, EncodedInferResponse):
            return response.serialize_as_stream_response()
        return response.SerializeToString()


def _raw_view(array: np.ndarray) -> memoryview:
    wire = DATATYPE_TO_NUMPY[datatype_of(array.dtype)]
    contiguous = np.ascontiguousarray(array, dtype=wire)
    return contiguous.reshape(-1).view(np.uint8).data


def encode_infer_response(response: pb.ModelInferResponse, outputs: Mapping[str, np.ndarray]) -> EncodedInferResponse:
    """``response`` (without raw contents) plus ``outputs``, their bytes not copied."""
    views = []
    for name, value in outputs.items():
        array = np.asarray(value)
        response.outputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
        views.append(_raw_view(array))
    return EncodedInferResponse(response, views)


_RAW_INPUT_CONTENTS_TAG_BYTE = bytes([_RAW_INPUT_CONTENTS_TAG])


@dataclass(frozen=True, slots=True)
class EncodedInferRequest:
    """A ``ModelInferRequest`` whose raw input tensors were not copied into protobuf.

    The device's side of :class:`EncodedInferResponse`: protobuf would copy each tensor three
    times (``tobytes``, into the message, into the serialized bytes); ``SerializeToString``
    copies it once, straight from the arrays' buffers. Its bytes are what protobuf writes for the
    whole message (``raw_input_contents``, field 7, is the last field of ``ModelInferRequest``).
    """

    message: pb.ModelInferRequest
    raw_input_contents: Sequence[memoryview]

    def SerializeToString(self) -> bytes:  # protobuf's name, so code that serializes messages takes this too
        chunks: list[bytes | memoryview] = [self.message.SerializeToString()]
        for raw in self.raw_input_contents:
            chunks += [_RAW_INPUT_CONTENTS_TAG_BYTE, _varint_bytes(raw.nbytes), raw]
        return b"".join(chunks)

    def ByteSize(self) -> int:  # protobuf's name: the serialized size, without serializing
        raw = sum(1 + len(_varint_bytes(view.nbytes)) + view.nbytes for view in self.raw_input_contents)
        return self.message.ByteSize() + raw

    def to_message(self) -> pb.ModelInferRequest:
        """The whole request as a protobuf message (copies the tensors)."""
        request = pb.ModelInferRequest()
        request.CopyFrom(self.message)
        request.raw_input_contents.extend(bytes(raw) for raw in self.raw_input_contents)
        return request


def encode_infer_request(
    request: pb.ModelInferRequest, inputs: Mapping[str, np.ndarray], outputs: Iterable[str] = ()
) -> EncodedInferRequest:
    """``request`` (without raw contents) plus ``inputs`` and the requested output names, the
    tensors' bytes not copied (a view of each array; a copy only for one that is not contiguous
    or not in the wire byte order)."""
    views = []
    for name, value in inputs.items():
        array = np.asarray(value)
        request.inputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
        views.append(_raw_view(array))
    for name in outputs:
        request.outputs.add(name=name)
    return EncodedInferRequest(request, views)


def decode_response_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """The response's outputs by name (raw or typed contents)."""
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        raise InvalidRequestError(
            f"raw_output_contents has {len(raw)} entries, expected one per output ({len(response.outputs)})"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(response.outputs):
        if raw:
            arrays[tensor.name] = array_from_raw(tensor.name, tensor.datatype, tensor.shape, raw[index])
        else:
            arrays[tensor.name] = _array_from_contents(tensor.name, tensor.datatype, tensor.shape, tensor.contents)
    return arrays
