"""The V2 gRPC servicer: each RPC converts protobuf to plain data, calls the ``DataPlane`` and converts
the answer back; ``answers_errors`` (``splitinf.cloud.errors``) maps every failure to its status.

``inference_method_handlers`` puts it on the wire with the zero-copy request parser and the
one-copy response serializer (``splitinf.protocol.tensors``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from splitinf import __version__
from splitinf.cloud.dataplane import DataPlane
from splitinf.cloud.deadlines import Expiry
from splitinf.cloud.errors import answers_errors, lenient, status_of
from splitinf.cloud.statistics import StatisticsSnapshot
from splitinf.cloud.streams import StreamRegistry
from splitinf.errors import InferenceError, InvalidRequestError
from splitinf.protocol import COMPUTE_NS_PARAMETER, MODEL_SHA256_PARAMETER, QUEUE_NS_PARAMETER
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc
from splitinf.protocol.services import SERVICE_NAME, tensor_metadata
from splitinf.protocol.tensors import (
    EncodedInferResponse,
    ParsedInferRequest,
    decode_request_inputs,
    encode_infer_response,
    parse_infer_request,
)

__all__ = ["InferenceServicer", "add_inference_servicer", "inference_method_handlers"]


InferRequest = pb.ModelInferRequest | ParsedInferRequest


def _statistics_message(snapshot: StatisticsSnapshot) -> pb.ModelStatistics:
    return pb.ModelStatistics(
        name=snapshot.name,
        version=snapshot.version,
        last_inference=snapshot.last_inference_ms,
        inference_count=snapshot.inference_count,
        execution_count=snapshot.execution_count,
        inference_stats=pb.InferStatistics(
            success=pb.StatisticDuration(count=snapshot.success_count, ns=snapshot.success_ns),
            fail=pb.StatisticDuration(count=snapshot.fail_count, ns=snapshot.fail_ns),
            queue=pb.StatisticDuration(count=snapshot.success_count, ns=snapshot.queue_ns),
            compute_infer=pb.StatisticDuration(count=snapshot.success_count, ns=snapshot.compute_ns),
        ),
    )


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """V2 gRPC adapter over a ``DataPlane``: protobuf <-> plain data, nothing else."""

    def __init__(self, dataplane: DataPlane, server_name: str = "splitinf", streams: StreamRegistry | None = None):
        self.dataplane = dataplane
        self.server_name = server_name
        self.streams = streams or StreamRegistry(total=32, per_client=8, idle_timeout_s=60.0)

    @answers_errors
    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @answers_errors
    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready)

    @answers_errors
    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    @answers_errors
    def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=self.server_name, version=__version__, extensions=[])

    @answers_errors
    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = self.dataplane.model(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=sorted(self.dataplane.models[model.name], key=int),
            platform="onnxruntime_onnx",
            inputs=tensor_metadata(model.inputs),
            outputs=tensor_metadata(model.outputs),
        )

    # Triton's extensions, for the tools of its world (perf_analyzer, model_analyzer).
    @answers_errors
    def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.ServicerContext) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self.dataplane.model(request.name, request.version).config)

    @answers_errors
    def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        snapshots = self.dataplane.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[_statistics_message(s) for s in snapshots])

    @answers_errors
    def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        if request.repository_name:
            raise InvalidRequestError(
                f"repository {request.repository_name!r}: this server has one repository; leave repository_name empty"
            )
        ready = self.dataplane.ready
        if request.ready and not ready:
            return pb.RepositoryIndexResponse()
        state, reason = ("READY", "") if ready else ("UNAVAILABLE", "the server is starting or shutting down")
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(name=name, version=version, state=state, reason=reason)
                for name, versions in sorted(self.dataplane.models.items())
                for version in sorted(versions, key=int)
            ]
        )

    def _infer(self, request: InferRequest, context: grpc.ServicerContext) -> EncodedInferResponse:
        """One inference request; the answer's tensors are serialized with one copy."""
        message = request.message if isinstance(request, ParsedInferRequest) else request
        self.dataplane.check_request_size(
            message.model_name, message.model_version, [(t.name, t.datatype, t.shape) for t in message.inputs]
        )
        outcome = self.dataplane.infer(
            message.model_name,
            message.model_version,
            decode_request_inputs(request),
            [output.name for output in message.outputs],
            Expiry.after(context.time_remaining(), context.is_active),
        )
        release = self.dataplane.release_memory_after(outcome)
        if release is not None:
            context.add_callback(release)  # runs once the call is over and its buffers are freed
        response = pb.ModelInferResponse(
            model_name=outcome.model.name, model_version=outcome.model.version, id=message.id
        )
        response.parameters[COMPUTE_NS_PARAMETER].int64_param = outcome.compute_ns
        response.parameters[QUEUE_NS_PARAMETER].int64_param = outcome.queue_ns
        response.parameters[MODEL_SHA256_PARAMETER].string_param = outcome.model.sha256
        return encode_infer_response(response, outcome.outputs)

    # ModelInfer and ModelStreamInfer as the server runs them (inference_method_handlers).
    model_infer_encoded = answers_errors(_infer)
    # Answers as EncodedInferResponse, errors as ModelStreamInferResponse(error_message=...);
    # EncodedInferResponse.serialize_stream takes both.
    _answer_stream = answers_errors(_infer, stream=True)

    def model_stream_infer_encoded(
        self, request_iterator: Iterator[InferRequest], context: grpc.ServicerContext
    ) -> Iterator[EncodedInferResponse | pb.ModelStreamInferResponse]:
        """A stream, if its client may open one more (else RESOURCE_EXHAUSTED); cancelled when idle too long."""
        try:
            stream = self.streams.open(context.peer(), context.cancel)
        except InferenceError as exc:
            context.abort(*status_of(exc))
        try:
            yield from self._answer_stream(stream.track(request_iterator), context)
        finally:
            self.streams.close(stream)

    def ModelInfer(self, request: InferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        """For grpcio-testing and direct callers: a protobuf (or zero-copy parsed) request, a protobuf answer."""
        return self.model_infer_encoded(request, context).to_message()

    def ModelStreamInfer(
        self, request_iterator: Iterator[InferRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ModelStreamInferResponse]:
        for response in self.model_stream_infer_encoded(request_iterator, context):
            if isinstance(response, EncodedInferResponse):
                yield pb.ModelStreamInferResponse(infer_response=response.to_message())
            else:
                yield response


def inference_method_handlers(servicer: InferenceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The V2 service's method handlers: the generated ones, but inference requests are parsed
    without copying their tensor bytes (``parse_infer_request``), answers are serialized
    with one copy of their tensors (``EncodedInferResponse``), and bytes that are not a message
    reach the handler as ``UndecodableRequest`` (INVALID_ARGUMENT) instead of failing in grpc."""

    def unary(method: Callable[..., Any], request: Any, response: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            method,
            request_deserializer=lenient(request.FromString, method.__name__),
            response_serializer=response.SerializeToString,
        )

    return {
        "ServerLive": unary(servicer.ServerLive, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": unary(servicer.ServerReady, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": unary(servicer.ModelReady, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": unary(servicer.ServerMetadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": unary(servicer.ModelMetadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelConfig": unary(servicer.ModelConfig, pb.ModelConfigRequest, pb.ModelConfigResponse),
        "ModelStatistics": unary(servicer.ModelStatistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
        "RepositoryIndex": unary(servicer.RepositoryIndex, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            servicer.model_infer_encoded,
            request_deserializer=lenient(parse_infer_request, "ModelInfer"),
            response_serializer=EncodedInferResponse.serialize,
        ),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            servicer.model_stream_infer_encoded,
            request_deserializer=lenient(parse_infer_request, "ModelStreamInfer"),
            response_serializer=EncodedInferResponse.serialize_stream,
        ),
    }


def add_inference_servicer(servicer: InferenceServicer, server: grpc.Server) -> None:
    """``add_GRPCInferenceServiceServicer_to_server`` with ``inference_method_handlers``."""
    handlers = inference_method_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
