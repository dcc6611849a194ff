"""The device's local V2 endpoint: applications on the Pi call the runtime with any V2 client.

``serve_endpoint(runtime, host, port)`` serves the Open Inference Protocol over gRPC (on
loopback by default) with one model, named after the plan's source model. An application
written against a Triton server works against the device unchanged: it sends the full model's
inputs and gets the full model's outputs, while the runtime behind the endpoint splits, falls
back and recovers. Each answer says how it was produced in its response parameters:

=============================  ======  ===============================================================
``splitinf_path``              string  the option that answered (``split:<cut>:<codec>``, ``local``, ``fallback``)
``splitinf_kind``              string  ``split``, ``local`` or ``fallback``
``splitinf_mode``              string  the policy's mode when the request was decided
``splitinf_fallback_reason``   string  why a split attempt was abandoned (only when one was)
``splitinf_attempted``         string  the split option tried first (only when it fell back)
``splitinf_<stage>_ns``        int64   latency per stage: head, network, server, local, wait; they add up to
                                       ``splitinf_total_ns``
=============================  ======  ===============================================================

ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ``grpc.health.v1`` and
server reflection (for grpcurl) are served too; the runtime's Prometheus metrics are served by
``Runtime.start_metrics_server``. A client deadline shorter than the device's budget becomes
the request's budget, so the fallback still answers within it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
from collections.abc import Iterator
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2

from splitinf import __version__
from splitinf.edge.runtime import Runtime, RuntimeResult
from splitinf.errors import ConfigError, InferenceError, InvalidRequestError, ModelNotFoundError, UsageError
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc
from splitinf.protocol.services import SERVICE_NAME, add_health_and_reflection, bind_address, tensor_metadata
from splitinf.protocol.tensors import decode_request_inputs, encode_response_outputs

__all__ = [
    "LATENCY_STAGES",
    "DeviceEndpoint",
    "DeviceServicer",
    "answer_parameters",
    "serve_endpoint",
]

log = logging.getLogger(__name__)

LATENCY_STAGES = ("head", "network", "server", "on_device", "wait", "total")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Part of a client's deadline kept for encoding and sending the answer back.
_DEADLINE_MARGIN = 0.9


def answer_parameters(result: RuntimeResult) -> dict[str, str | int]:
    """The response parameters saying how ``result`` was produced (see the module docstring)."""
    parameters: dict[str, str | int] = {
        "splitinf_path": result.option_id,
        "splitinf_kind": result.kind,
        "splitinf_mode": result.mode,
    }
    if result.fallback_reason is not None:
        parameters["splitinf_fallback_reason"] = result.fallback_reason
    if result.attempted_option is not None:
        parameters["splitinf_attempted"] = result.attempted_option
    for stage in LATENCY_STAGES:
        parameters[f"splitinf_{stage}_ns"] = round(getattr(result.latency, f"{stage}_s") * 1e9)
    return parameters


class DeviceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """V2 adapter over a ``Runtime``: protobuf <-> numpy and error -> status, nothing else."""

    def __init__(self, runtime: Runtime, model_name: str, version: str = "1"):
        self.runtime = runtime
        self.model_name = model_name
        self.version = version
        self.ready = True

    def _check_model(self, name: str, version: str) -> None:
        if name != self.model_name:
            raise ModelNotFoundError(f"unknown model {name!r}; this device serves {self.model_name!r}")
        if version not in ("", self.version):
            raise ModelNotFoundError(f"model {name!r} has no version {version!r}; it has {self.version!r}")

    @staticmethod
    def _abort(context: grpc.ServicerContext, exc: Exception) -> NoReturn:
        """The one place where an error becomes a gRPC status."""
        if isinstance(exc, InferenceError):
            context.abort(grpc.StatusCode[exc.code], str(exc))
        if isinstance(exc, UsageError):  # the runtime's InputError: names, dtypes or shapes
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        log.exception("unexpected error answering a call")
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    @contextlib.contextmanager
    def _answer(self, context: grpc.ServicerContext) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            self._abort(context, exc)

    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready)

    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        with self._answer(context):
            self._check_model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self.ready)

    def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="splitinf-device", version=__version__, extensions=[])

    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        with self._answer(context):
            self._check_model(request.name, request.version)
        plan = self.runtime.plan
        return pb.ModelMetadataResponse(
            name=self.model_name,
            versions=[self.version],
            platform="splitinf",
            inputs=tensor_metadata(plan.inputs),
            outputs=tensor_metadata(plan.outputs),
        )

    def _budget(self, context: grpc.ServicerContext) -> float:
        budget = self.runtime.config.budget_s
        remaining = context.time_remaining()
        if remaining is not None and remaining * _DEADLINE_MARGIN < budget:
            budget = max(remaining * _DEADLINE_MARGIN, 0.001)
        return budget

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        with self._answer(context):
            self._check_model(request.model_name, request.model_version)
            requested = [output.name for output in request.outputs]
            known = [spec.name for spec in self.runtime.plan.outputs]
            unknown = sorted(set(requested) - set(known))
            if unknown:
                raise InvalidRequestError(f"unknown output(s) {unknown}; {self.model_name!r} has {known}")
            result = self.runtime.infer(decode_request_inputs(request), budget_s=self._budget(context))
            outputs = {name: result.outputs[name] for name in requested} if requested else result.outputs
            response = pb.ModelInferResponse(model_name=self.model_name, model_version=self.version, id=request.id)
            for key, value in answer_parameters(result).items():
                if isinstance(value, int):
                    response.parameters[key].int64_param = value
                else:
                    response.parameters[key].string_param = value
            encode_response_outputs(response, outputs)
            return response
        raise AssertionError("unreachable")  # pragma: no cover  (abort raised)


class DeviceEndpoint:
    """A running device endpoint; ``stop()`` it (the runtime is the caller's to close)."""

    def __init__(self, grpc_server: grpc.Server, servicer: DeviceServicer, health_servicer: Any, port: int):
        self.grpc_server = grpc_server
        self.servicer = servicer
        self.health = health_servicer
        self.port = port

    def stop(self, grace: float | None = 1.0) -> None:
        self.servicer.ready = False
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()

    def __enter__(self) -> DeviceEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=0)


def serve_endpoint(
    runtime: Runtime,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    model_name: str | None = None,
    workers: int = 4,
) -> tuple[DeviceEndpoint, int]:
    """Start serving ``runtime`` as one V2 model; returns the endpoint and the bound port (``port=0``: any)."""
    servicer = DeviceServicer(runtime, model_name or runtime.plan.model_name)
    grpc_server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="splitinf-endpoint"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
        # Calls beyond the workers wait in a bounded queue, then get RESOURCE_EXHAUSTED.
        maximum_concurrent_rpcs=4 * workers,
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, grpc_server)
    health_servicer = add_health_and_reflection(grpc_server)
    address = bind_address(host, port)
    try:
        bound = grpc_server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc's "Failed to bind"
        raise ConfigError(f"cannot listen on {address} (in use, or not an address of this host): {exc}") from exc
    if bound == 0:
        raise ConfigError(f"cannot listen on {address} (in use, or not an address of this host)")
    grpc_server.start()
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("device endpoint: model %r on %s", servicer.model_name, bind_address(host, bound))
    return DeviceEndpoint(grpc_server, servicer, health_servicer, bound), bound
