"""Every failure becomes a gRPC status in one place (``splitinf.cloud.errors``), unary and stream alike."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest

from splitinf import errors
from splitinf.cloud.errors import status_of
from splitinf.protocol import encode_request
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc
from splitinf.protocol.tensors import decode_response_outputs
from splitinf.tools.testing.graphs import mlp

StartV2Server = Callable[..., Any]
TIMEOUT = 10.0


def test_every_inference_error_code_is_a_grpc_status() -> None:
    classes = [errors.InferenceError, *errors.InferenceError.__subclasses__()]
    for cls in classes:
        status, details = status_of(cls("why"))
        assert status.name == cls.code and details == "why"
    assert {cls.code for cls in classes} >= {"NOT_FOUND", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}


def test_an_unexpected_error_is_internal_logged_and_counted_in_unary_and_stream_calls(
    start_v2_server: StartV2Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    running = start_v2_server({"mlp": mlp(), "buggy": mlp()})

    def bug(*args: object) -> int:
        raise RuntimeError("a bug in the server")

    monkeypatch.setattr(running.server.dataplane.models["buggy"]["1"], "validate", bug)
    x = np.ones((1, 16), np.float32)
    good, buggy = (encode_request(pb.ModelInferRequest(model_name=name), {"x": x}) for name in ("mlp", "buggy"))
    with caplog.at_level(logging.ERROR, logger="splitinf.cloud.errors"), grpc.insecure_channel(running.target) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(buggy, timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert info.value.details() == "internal server error: RuntimeError: a bug in the server"
        answers = list(stub.ModelStreamInfer(iter([good, buggy, good]), timeout=TIMEOUT))
    bug_answer = "INTERNAL: internal server error: RuntimeError: a bug in the server"
    assert [a.error_message for a in answers] == ["", bug_answer, ""]  # the stream went on
    assert decode_response_outputs(answers[2].infer_response)["y"].shape == (1, 4)
    logged = [r for r in caplog.records if r.exc_info and "model 'buggy'" in r.getMessage()]
    assert len(logged) == 2, [r.getMessage() for r in caplog.records]  # with its traceback, once per call
    registry = running.server.metrics.registry
    assert registry.get_sample_value("splitinf_requests_total", {"model": "buggy", "code": "INTERNAL"}) == 2
    assert registry.get_sample_value("splitinf_request_failures_total", {"model": "buggy", "code": "INTERNAL"}) == 2
    assert registry.get_sample_value("splitinf_requests_total", {"model": "mlp", "code": "OK"}) == 2
