"""TLS / mutual TLS credentials from certificate files, and the optional bearer token.

Shared by the server (``ServerTLS``, ``TokenAuthInterceptor``) and the device client
(``ClientTLS``, ``bearer_metadata``). The token travels as ``authorization: Bearer <token>``
call metadata, the header Triton and KServe gateways use too.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from splitinf.errors import ConfigError

__all__ = [
    "AUTHORIZATION_HEADER",
    "ClientTLS",
    "ServerTLS",
    "TokenAuthInterceptor",
    "bearer_metadata",
    "read_token",
]

AUTHORIZATION_HEADER = "authorization"
# Orchestrators' health probes (Kubernetes grpc probes) cannot send a token; health status
# reveals nothing, so it stays open while everything else needs the token.
_OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class ServerTLS:
    """Server certificate and key (PEM); with ``client_ca_file``, clients must present a cert it signed (mTLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        cert = _read(self.cert_file, "TLS certificate")
        key = _read(self.key_file, "TLS key")
        client_ca = _read(self.client_ca_file, "client CA file") if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )


@dataclass(frozen=True)
class ClientTLS:
    """What the device trusts (``ca_file``; system roots when None) and, for mTLS, its own cert and key."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None  # expected name in the server's cert, when it differs from the target host

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("client TLS needs both cert_file and key_file for mutual TLS, or neither")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA file") if self.ca_file else None,
            private_key=_read(self.key_file, "client key") if self.key_file else None,
            certificate_chain=_read(self.cert_file, "client certificate") if self.cert_file else None,
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def read_token(path: str | Path) -> str:
    """A bearer token from a file (surrounding whitespace removed); ConfigError when empty or unreadable."""
    token = _read(path, "token file").decode("utf-8", errors="strict").strip()
    if not token:
        raise ConfigError(f"the token file {path} is empty; put the bearer token in it")
    return token


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((AUTHORIZATION_HEADER, f"Bearer {token}"),)


def _denied(message: str) -> Callable[[Any, grpc.ServicerContext], Any]:
    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return deny


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Refuses every call (except health checks) without ``authorization: Bearer <token>`` (UNAUTHENTICATED)."""

    def __init__(self, token: str):
        if not token:
            raise ConfigError("the bearer token is empty")
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith(_OPEN_METHOD_PREFIXES):
            return continuation(handler_call_details)
        presented = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == AUTHORIZATION_HEADER and isinstance(value, str):
                presented = value
        if hmac.compare_digest(presented.encode(), self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        reason = "missing bearer token" if not presented else "wrong bearer token"
        deny = _denied(f"{reason}: send 'authorization: Bearer <token>' metadata")
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)
