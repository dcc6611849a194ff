"""The server's side of TLS, mutual TLS and the bearer token.

``TokenAuthInterceptor`` refuses every call but health checks without ``authorization: Bearer <token>``:
methods that do not exist too (UNAUTHENTICATED, not UNIMPLEMENTED, so which exist is not revealed),
and calls with several ``authorization`` headers (ambiguous: no header wins over another).
``token_interceptors`` builds it for a server and warns once when the token would travel in plaintext.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from splitinf.contract.secrets import read_secret
from splitinf.errors import ConfigError
from splitinf.protocol import AUTHORIZATION_HEADER

__all__ = ["ServerTLS", "TokenAuthInterceptor", "token_interceptors"]

log = logging.getLogger(__name__)

# Orchestrators' health probes (Kubernetes grpc probes) cannot send a token; health status
# reveals nothing, so it stays open while everything else needs the token.
_OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


@dataclass(frozen=True)
class ServerTLS:
    """Server certificate and key (PEM); with ``client_ca_file``, clients must present a cert it signed (mTLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        cert = read_secret(self.cert_file, "TLS certificate")
        key = read_secret(self.key_file, "TLS key")
        client_ca = read_secret(self.client_ca_file, "client CA file") if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )


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
        presented = [
            value
            for key, value in handler_call_details.invocation_metadata or ()
            if key == AUTHORIZATION_HEADER and isinstance(value, str)
        ]
        if len(presented) == 1 and hmac.compare_digest(presented[0].encode(), self._expected):
            return continuation(handler_call_details)
        if len(presented) > 1:
            reason = "several authorization headers (ambiguous)"
        else:
            reason = "missing bearer token" if not presented else "wrong bearer token"
        deny = _denied(f"{reason}: send one 'authorization: Bearer <token>' metadata")
        handler = continuation(handler_call_details)
        if handler is None or (handler.request_streaming and handler.response_streaming):
            # an unknown method answers as a known one would; stream-stream reads no request
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


def token_interceptors(token: str | None, *, tls: bool) -> list[grpc.ServerInterceptor]:
    """The interceptors a server with this token needs; a token without TLS is logged once."""
    if not token:
        return []
    if not tls:
        log.warning(
            "a bearer token is set but TLS is not: the token crosses the network in plaintext; "
            "configure a TLS certificate and key (or keep the server on loopback behind a TLS proxy)"
        )
    return [TokenAuthInterceptor(token)]
