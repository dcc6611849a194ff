"""Pieces every V2 gRPC server of ours shares: the service name, tensor metadata, health and reflection.

The tail server (``splitinf.cloud``) and the device's local endpoint (``splitinf.edge.endpoint``)
both serve ``inference.GRPCInferenceService`` with the standard ``grpc.health.v1`` and server
reflection (so grpcurl needs no .proto files); what they have in common lives here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol.tensors import datatype_of

__all__ = ["SERVICE_NAME", "add_health_and_reflection", "bind_address", "reflection_pool", "tensor_metadata"]

SERVICE_NAME = "inference.GRPCInferenceService"


def tensor_metadata(specs: Sequence[Any]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    """ModelMetadata's tensors from specs with ``name``, ``dtype`` and ``shape`` (symbolic dims become -1)."""
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=spec.name,
            datatype=datatype_of(spec.dtype),
            shape=[d if isinstance(d, int) else -1 for d in spec.shape],
        )
        for spec in specs
    ]


def reflection_pool() -> Any:
    """Our private descriptor pool plus the health and reflection services, for server reflection."""
    pool = pb.DESCRIPTOR.pool
    for module in (health_pb2, reflection_pb2):
        with contextlib.suppress(TypeError):  # already added
            pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


def add_health_and_reflection(server: grpc.Server) -> health.HealthServicer:
    """grpc.health.v1 (NOT_SERVING until the caller sets SERVING) and reflection for the V2 service."""
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server, pool=reflection_pool()
    )
    return health_servicer


def bind_address(host: str, port: int) -> str:
    """``host:port`` as gRPC binds it (IPv6 literals in brackets)."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"
