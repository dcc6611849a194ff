"""The device's side of TLS, mutual TLS and the bearer token (``authorization: Bearer <token>``).

The token travels as call metadata, the header Triton and KServe gateways use too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from splitinf.contract.secrets import read_secret
from splitinf.errors import ConfigError
from splitinf.protocol import AUTHORIZATION_HEADER

__all__ = ["ClientTLS", "bearer_metadata"]


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
            root_certificates=read_secret(self.ca_file, "CA file") if self.ca_file else None,
            private_key=read_secret(self.key_file, "client key") if self.key_file else None,
            certificate_chain=read_secret(self.cert_file, "client certificate") if self.cert_file else None,
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((AUTHORIZATION_HEADER, f"Bearer {token}"),)
