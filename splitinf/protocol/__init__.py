"""The Open Inference Protocol (KServe V2) over gRPC: generated stubs and numpy <-> tensor conversion.

``grpc_service_pb2`` / ``grpc_service_pb2_grpc`` are generated from ``protos/grpc_service.proto``
by ``scripts/gen_protos.py`` (do not edit them by hand); ``tensors`` converts arrays.
"""

from __future__ import annotations

from splitinf.protocol.tensors import (
    DATATYPE_TO_NUMPY,
    array_from_raw,
    datatype_of,
    decode_request_inputs,
    decode_response_outputs,
    encode_request,
    encode_response_outputs,
    numpy_dtype,
)

__all__ = [
    "AUTHORIZATION_HEADER",
    "COMPUTE_NS_PARAMETER",
    "DATATYPE_TO_NUMPY",
    "MODEL_SHA256_PARAMETER",
    "QUEUE_NS_PARAMETER",
    "array_from_raw",
    "datatype_of",
    "decode_request_inputs",
    "decode_response_outputs",
    "encode_request",
    "encode_response_outputs",
    "numpy_dtype",
]

# Response parameters splitinf adds (preamble contract): the server's compute time for the
# request (int64 ns) and the sha256 of the model.onnx that answered (string).
COMPUTE_NS_PARAMETER = "splitinf_compute_ns"
MODEL_SHA256_PARAMETER = "splitinf_model_sha256"
# The time the request waited on the server between arriving and its tail starting (int64 ns:
# admission and the batch queue). Optional: the device corrects its costs by it where a server
# reports it (splitinf.edge.correction) and does without it where not.
QUEUE_NS_PARAMETER = "splitinf_queue_ns"
# The call metadata that carries the bearer token, as Triton and KServe gateways use it.
AUTHORIZATION_HEADER = "authorization"
