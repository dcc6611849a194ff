"""The bearer token's edges, against a real server on port 0 with stock grpc clients."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from splitinf.cloud.auth import ServerTLS
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc

# The conftest fixtures' types (fixtures, not imports: tests/tools/chaos has its own conftest.py).
StartV2Server = Callable[..., Any]
TLSMaterial = Any

TOKEN = "s3cret-token"


def _call_raw(target: str, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            call(b"", timeout=10, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_unknown_methods_without_a_token_are_unauthenticated_not_unimplemented(
    start_v2_server: StartV2Server,
) -> None:
    running = start_v2_server(token=TOKEN)
    # without a token, which methods exist is not revealed
    for method in ("/inference.GRPCInferenceService/NoSuchMethod", "/no.such.Service/Call"):
        assert _call_raw(running.target, method) == grpc.StatusCode.UNAUTHENTICATED
    authorized = (("authorization", f"Bearer {TOKEN}"),)
    assert _call_raw(running.target, "/no.such.Service/Call", authorized) == grpc.StatusCode.UNIMPLEMENTED
    with grpc.insecure_channel(running.target) as channel:
        stream = channel.stream_stream("/no.such.Service/Stream", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([b"", b""]), timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_several_authorization_headers_are_refused_as_ambiguous(start_v2_server: StartV2Server) -> None:
    running = start_v2_server(token=TOKEN)
    right, wrong = ("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")
    with grpc.insecure_channel(running.target) as channel:
        live = pb_grpc.GRPCInferenceServiceStub(channel).ServerLive
        assert live(pb.ServerLiveRequest(), timeout=10, metadata=(right,)).live
        for metadata in ((wrong, right), (right, wrong), (right, right)):
            with pytest.raises(grpc.RpcError) as info:
                live(pb.ServerLiveRequest(), timeout=10, metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "several authorization" in (info.value.details() or "")


def test_a_token_without_tls_logs_one_warning_at_start(
    start_v2_server: StartV2Server, tls_material: TLSMaterial, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        start_v2_server(token=TOKEN)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "token" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "TLS" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        start_v2_server(token=TOKEN, tls=ServerTLS(tls_material.server_cert, tls_material.server_key))
        start_v2_server()
    assert not [r for r in caplog.records if "token" in r.getMessage()], caplog.text
