"""TLS, mutual TLS and the bearer token, against a real server with throwaway certificates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitinf.cloud.auth import ServerTLS
from splitinf.edge.client import InferenceClient
from splitinf.edge.tls import ClientTLS
from splitinf.errors import RemoteRejectedError, RemoteUnavailableError
from splitinf.protocol import encode_request
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc

# The conftest fixtures' types (fixtures, not imports: tests/tools/chaos has its own conftest.py).
StartV2Server = Callable[..., Any]
TLSMaterial = Any


X = {"x": np.ones((1, 16), np.float32)}


def test_tls_serves_trusting_clients_only(start_v2_server: StartV2Server, tls: TLSMaterial) -> None:
    running = start_v2_server(tls=ServerTLS(tls.server_cert, tls.server_key))
    with InferenceClient(f"localhost:{running.port}", tls=ClientTLS(ca_file=tls.ca)) as client:
        assert client.infer("mlp", X, timeout_s=10).outputs["y"].shape == (1, 4)
    with InferenceClient(f"localhost:{running.port}", tls=ClientTLS(ca_file=tls.other_ca)) as client:
        with pytest.raises(RemoteUnavailableError):
            client.infer("mlp", X, timeout_s=10)
    with InferenceClient(running.target) as plaintext:
        with pytest.raises(RemoteUnavailableError):
            plaintext.server_live(timeout_s=10)


def test_mutual_tls_needs_a_client_certificate(start_v2_server: StartV2Server, tls: TLSMaterial) -> None:
    running = start_v2_server(tls=ServerTLS(tls.server_cert, tls.server_key, client_ca_file=tls.ca))
    with_cert = ClientTLS(ca_file=tls.ca, cert_file=tls.client_cert, key_file=tls.client_key)
    with InferenceClient(f"127.0.0.1:{running.port}", tls=with_cert) as client:
        assert client.server_ready(timeout_s=10)
        assert client.infer("mlp", X, timeout_s=10).outputs["y"].shape == (1, 4)
    with InferenceClient(f"127.0.0.1:{running.port}", tls=ClientTLS(ca_file=tls.ca)) as anonymous:
        with pytest.raises(RemoteUnavailableError):
            anonymous.infer("mlp", X, timeout_s=10)


def test_token_is_checked_on_every_call(start_v2_server: StartV2Server) -> None:
    running = start_v2_server(token="s3cret-token")
    with InferenceClient(running.target, token="s3cret-token") as client:
        assert client.server_live(timeout_s=10)
        assert client.infer("mlp", X, timeout_s=10).outputs["y"].shape == (1, 4)
    for token in (None, "wrong"):
        with InferenceClient(running.target, token=token) as client:
            for call in (lambda: client.server_live(timeout_s=10), lambda: client.infer("mlp", X, timeout_s=10)):
                with pytest.raises(RemoteRejectedError) as info:
                    call()
                assert info.value.code == "UNAUTHENTICATED"
                assert ("missing" if token is None else "wrong") + " bearer token" in str(info.value)
    with grpc.insecure_channel(running.target) as channel:
        stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([encode_request(pb.ModelInferRequest(model_name="mlp"), X)]), timeout=10
        )
        with pytest.raises(grpc.RpcError) as rpc_info:
            list(stream)
        assert rpc_info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Kubernetes' gRPC probes cannot send a token: health stays open.
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def tls(tls_material: TLSMaterial) -> TLSMaterial:
    return tls_material
