"""Errors become gRPC statuses here and nowhere else: ``InferenceError.code`` (a status name such as
``"NOT_FOUND"``) maps to ``grpc.StatusCode``, anything unexpected to INTERNAL.

Every RPC of the servicer wears ``answers_errors``, unary and stream alike. The error is mapped,
counted by model and code, and an unexpected one is logged with its traceback; then a unary
call fails with the status, and a stream answers that one request with
``error_message="CODE: message"`` and goes on (Triton's semantics).

Request bytes protobuf cannot parse arrive as ``UndecodableRequest`` (the servicer's deserializers
never raise: grpc would answer INTERNAL and log a traceback) and are answered INVALID_ARGUMENT with
one log line. Details are cut to ``MAX_DETAILS_CHARS``: a client-chosen name must not be echoed
whole into a header the client cannot read.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from splitinf.errors import InferenceError, InvalidRequestError
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol.tensors import ParsedInferRequest

__all__ = ["MAX_DETAILS_CHARS", "UndecodableRequest", "answers_errors", "lenient", "status_of"]

log = logging.getLogger(__name__)

MAX_DETAILS_CHARS = 1024  # well under gRPC's default 8 KiB metadata limit, whole messages fit


@dataclass(frozen=True)
class UndecodableRequest:
    """What a request deserializer returns instead of raising: the bytes were not a valid message."""

    method: str
    reason: str


def lenient(parse: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    """``parse``, but a message it cannot parse becomes an ``UndecodableRequest`` instead of an exception."""

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # protobuf's DecodeError, or what the zero-copy parse trips over
            return UndecodableRequest(method, f"{type(exc).__name__}: {exc}"[:200])

    return deserialize


def _shortened(details: str) -> str:
    if len(details) <= MAX_DETAILS_CHARS:
        return details
    return f"{details[: MAX_DETAILS_CHARS - 40]}... ({len(details) - MAX_DETAILS_CHARS + 40} more characters)"


class _AnswerCounter(Protocol):
    def record_answer(self, name: str | None, code: str) -> None: ...


class _Servicer(Protocol):
    @property
    def dataplane(self) -> _AnswerCounter: ...


ServicerT = TypeVar("ServicerT", bound=_Servicer)
Handler = Callable[[ServicerT, Any, grpc.ServicerContext], Any]


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and details a failed call is answered with."""
    if isinstance(exc, InferenceError):
        return grpc.StatusCode[exc.code], _shortened(str(exc))
    return grpc.StatusCode.INTERNAL, _shortened(f"internal server error: {type(exc).__name__}: {exc}")


def _decoded(request: Any) -> Any:
    """The request, or InvalidRequestError when its bytes were not a valid message."""
    if isinstance(request, UndecodableRequest):
        log.warning("refused an undecodable %s request: %s", request.method, request.reason)
        raise InvalidRequestError(f"the {request.method} request is not a valid protobuf message ({request.reason})")
    return request


def _inference_model(request: Any) -> str | None:
    """The model an inference request names; None for the other RPCs, which are not counted."""
    if isinstance(request, ParsedInferRequest):
        return request.message.model_name
    if isinstance(request, pb.ModelInferRequest):
        return request.model_name
    return None


def _failed(servicer: _Servicer, request: Any, exc: Exception) -> tuple[grpc.StatusCode, str]:
    status, details = status_of(exc)
    model = _inference_model(request)
    if not isinstance(exc, InferenceError):
        log.exception("unexpected error answering %s", f"model {model!r}" if model is not None else "a call")
    servicer.dataplane.record_answer(model, status.name)
    return status, details


def answers_errors(handler: Handler[ServicerT], *, stream: bool = False) -> Callable[..., Any]:
    """The servicer's one error-mapping decorator, around ``handler(servicer, request, context)``,
    which answers ONE request message.

    ``stream=False``: the RPC is the handler; an error aborts the call with its status.
    ``stream=True``: the RPC takes the stream of requests and answers each with the handler; an
    error answers its request with ``ModelStreamInferResponse(error_message=...)``, and the stream goes on.
    """
    if stream:

        @functools.wraps(handler)
        def stream_rpc(servicer: ServicerT, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            for request in requests:
                try:
                    response = handler(servicer, _decoded(request), context)
                except Exception as exc:
                    status, details = _failed(servicer, request, exc)
                    yield pb.ModelStreamInferResponse(error_message=f"{status.name}: {details}")
                    continue
                servicer.dataplane.record_answer(_inference_model(request), "OK")
                yield response

        return stream_rpc

    @functools.wraps(handler)
    def unary_rpc(servicer: ServicerT, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            response = handler(servicer, _decoded(request), context)
        except Exception as exc:
            context.abort(*_failed(servicer, request, exc))
        servicer.dataplane.record_answer(_inference_model(request), "OK")
        return response

    return unary_rpc
