"""The device's V2 client: one gRPC channel to a tail server (or Triton, KServe, MLServer).

Channel behaviour is data (``ChannelOptions``): keepalive pings every ~2 s so a black hole
is noticed in seconds, capped reconnect backoff, fail fast (no wait_for_ready), a deadline
on every call, gRPC's own retries off (the device has exactly one retry layer, above this
client). Every ``grpc.RpcError`` becomes a ``splitinf.errors.TransportError`` in
``_transport_errors`` and nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from splitinf.edge.tls import ClientTLS, bearer_metadata
from splitinf.errors import (
    InferenceError,
    RemoteMismatchError,
    RemoteRejectedError,
    RemoteTimeoutError,
    RemoteUnavailableError,
)
from splitinf.protocol import COMPUTE_NS_PARAMETER, MODEL_SHA256_PARAMETER, QUEUE_NS_PARAMETER
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc
from splitinf.protocol.tensors import EncodedInferRequest, decode_response_outputs, encode_infer_request

__all__ = ["ChannelOptions", "InferResult", "InferenceClient", "transport_errors"]

MIB = 1024 * 1024
MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"

# Statuses meaning "no answer came": the request may not have reached a model.
_UNAVAILABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


@dataclass(frozen=True)
class ChannelOptions:
    keepalive_time_ms: int = 2000
    keepalive_timeout_ms: int = 2000
    initial_reconnect_backoff_ms: int = 250
    min_reconnect_backoff_ms: int = 250
    max_reconnect_backoff_ms: int = 1500
    max_message_bytes: int = 64 * MIB
    compression: str | None = None  # "gzip" or "deflate"
    load_balancing: str | None = None  # "round_robin" for a headless DNS target (dns:///tail:8001)

    def grpc_options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            # grpc-core only drops a transport whose ping went unanswered after this timeout (1 min by default,
            # grpc/grpc#39239), so without it a black hole is found at TCP's pace, not keepalive's.
            ("grpc.http2.ping_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", self.initial_reconnect_backoff_ms),
            ("grpc.min_reconnect_backoff_ms", self.min_reconnect_backoff_ms),
            ("grpc.max_reconnect_backoff_ms", self.max_reconnect_backoff_ms),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            # One retry layer on the device (tenacity, above this client), never two.
            ("grpc.enable_retries", 0),
        ]
        if self.load_balancing:
            options.append(("grpc.service_config", json.dumps({"loadBalancingConfig": [{self.load_balancing: {}}]})))
        return options

    def grpc_compression(self) -> grpc.Compression | None:
        return {
            None: None,
            "gzip": grpc.Compression.Gzip,
            "deflate": grpc.Compression.Deflate,
        }[self.compression]


@dataclass(frozen=True)
class InferResult:
    outputs: dict[str, np.ndarray]
    server_compute_s: float  # the server's compute time (0.0 when the server does not report it)
    model_sha256: str | None
    request_bytes: int
    response_bytes: int
    round_trip_s: float
    model_version: str = ""
    # the time the request queued on the server (``splitinf_queue_ns``); None when the server does not say
    server_queue_s: float | None = None


@contextlib.contextmanager
def transport_errors(what: str) -> Iterator[None]:
    """The one place where grpc.RpcError becomes a TransportError."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        name = code.name if code else None
        message = f"{what}: {name or 'error'}: {details}"
        if code in _UNAVAILABLE_CODES:
            raise RemoteUnavailableError(message, code=name, responded=False) from exc
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise RemoteTimeoutError(message, code=name, responded=False) from exc
        raise RemoteRejectedError(message, code=name, responded=True) from exc


def _parameter(response: pb.ModelInferResponse, key: str) -> Any:
    if key not in response.parameters:
        return None
    parameter = response.parameters[key]
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def _seconds(response: pb.ModelInferResponse, key: str) -> float | None:
    """A time parameter in nanoseconds as seconds; None when absent or not a number (a server of another kind)."""
    value = _parameter(response, key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return value / 1e9


class InferenceClient:
    """A V2 client over one channel. Thread-safe; ``close()`` when done (or use ``with``)."""

    def __init__(
        self,
        target: str,
        *,
        tls: ClientTLS | None = None,
        token: str | None = None,
        options: ChannelOptions = ChannelOptions(),  # frozen, so sharing the default is safe
    ):
        self.target = target
        self.options = options
        channel_options = options.grpc_options() + (tls.channel_options() if tls else [])
        compression = options.grpc_compression()
        if tls is not None:
            self._channel = grpc.secure_channel(target, tls.credentials(), channel_options, compression)
        else:
            self._channel = grpc.insecure_channel(target, channel_options, compression)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        # ModelInfer with requests serialized from the arrays' buffers (one copy of the tensors, not three)
        self._model_infer = self._channel.unary_unary(
            MODEL_INFER_METHOD,
            request_serializer=EncodedInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        self._metadata = bearer_metadata(token) if token else ()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def watch_connectivity(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(ready)`` on every change of the channel's state (from gRPC's own thread),
        so a caller can tell a reconnect (which may reach another deployment) from a kept connection."""
        self._channel.subscribe(lambda state: callback(state is grpc.ChannelConnectivity.READY))

    def server_live(self, timeout_s: float) -> bool:
        with transport_errors(f"ServerLive on {self.target}"):
            response = self._stub.ServerLive(pb.ServerLiveRequest(), timeout=timeout_s, metadata=self._metadata)
        return bool(response.live)

    def server_ready(self, timeout_s: float) -> bool:
        with transport_errors(f"ServerReady on {self.target}"):
            response = self._stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout_s, metadata=self._metadata)
        return bool(response.ready)

    def model_ready(self, name: str, timeout_s: float, version: str = "") -> bool:
        with transport_errors(f"ModelReady {name!r} on {self.target}"):
            response = self._stub.ModelReady(
                pb.ModelReadyRequest(name=name, version=version), timeout=timeout_s, metadata=self._metadata
            )
        return bool(response.ready)

    def model_metadata(self, name: str, timeout_s: float, version: str = "") -> pb.ModelMetadataResponse:
        with transport_errors(f"ModelMetadata {name!r} on {self.target}"):
            response: pb.ModelMetadataResponse = self._stub.ModelMetadata(
                pb.ModelMetadataRequest(name=name, version=version), timeout=timeout_s, metadata=self._metadata
            )
        return response

    def model_statistics(self, name: str, timeout_s: float, version: str = "") -> pb.ModelStatisticsResponse:
        """The server's (Triton's) per-version counters for ``name``: inferences, compute time."""
        with transport_errors(f"ModelStatistics {name!r} on {self.target}"):
            response: pb.ModelStatisticsResponse = self._stub.ModelStatistics(
                pb.ModelStatisticsRequest(name=name, version=version), timeout=timeout_s, metadata=self._metadata
            )
        return response

    def infer(
        self,
        model_name: str,
        inputs: Mapping[str, np.ndarray],
        *,
        timeout_s: float,
        version: str = "",
        request_id: str = "",
    ) -> InferResult:
        """One inference with a deadline of ``timeout_s``; an undecodable answer is a ``RemoteMismatchError``.

        Whether the answer is the right one (its tensors, the tail's sha256) is the caller's to judge.
        """
        request = encode_infer_request(
            pb.ModelInferRequest(model_name=model_name, model_version=version, id=request_id), inputs
        )
        request_bytes = request.ByteSize()
        started = time.perf_counter()
        with transport_errors(f"ModelInfer {model_name!r} on {self.target}"):
            response: pb.ModelInferResponse = self._model_infer(request, timeout=timeout_s, metadata=self._metadata)
        round_trip_s = time.perf_counter() - started
        try:
            arrays = decode_response_outputs(response)
        except InferenceError as exc:
            raise RemoteMismatchError(f"undecodable answer from {self.target}: {exc}", responded=True) from exc
        return InferResult(
            outputs=arrays,
            server_compute_s=_seconds(response, COMPUTE_NS_PARAMETER) or 0.0,
            model_sha256=_parameter(response, MODEL_SHA256_PARAMETER),
            request_bytes=request_bytes,
            response_bytes=response.ByteSize(),
            round_trip_s=round_trip_s,
            model_version=response.model_version,
            server_queue_s=_seconds(response, QUEUE_NS_PARAMETER),
        )
