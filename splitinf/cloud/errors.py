"""Errors become gRPC statuses here and nowhere else: ``InferenceError.code`` (a status name such as
``"NOT_FOUND"``) maps to ``grpc.StatusCode``, anything unexpected to INTERNAL.

Every RPC of the servicer wears ``answers_errors``, unary and stream alike. The error is mapped,
counted by model and code, and an unexpected one is logged with its traceback; then a unary
call fails with the status, and a stream answers that one request with
``error_message="CODE: message"`` and goes on (Triton's semantics).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import grpc

from splitinf.errors import InferenceError
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol.tensors import ParsedInferRequest

__all__ = ["answers_errors", "status_of"]

log = logging.getLogger(__name__)


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
        return grpc.StatusCode[exc.code], str(exc)
    return grpc.StatusCode.INTERNAL, f"internal server error: {type(exc).__name__}: {exc}"


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
                    response = handler(servicer, request, context)
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
            response = handler(servicer, request, context)
        except Exception as exc:
            context.abort(*_failed(servicer, request, exc))
        servicer.dataplane.record_answer(_inference_model(request), "OK")
        return response

    return unary_rpc
