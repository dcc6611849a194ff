"""The stock tritonclient[grpc] client against our server gives onnxruntime's numbers.

tritonclient registers its own ``inference.*`` descriptors in protobuf's default pool; ours
live in a private pool (scripts/gen_protos.py), so both load in one process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from splitinf.tools.testing.graphs import two_in_two_out

# The conftest fixtures' types (fixtures, not imports: tests/tools/chaos has its own conftest.py).
StartV2Server = Callable[..., Any]


tritonclient_grpc = pytest.importorskip("tritonclient.grpc")


def test_stock_tritonclient_infer_equals_onnxruntime(start_v2_server: StartV2Server) -> None:
    model = two_in_two_out()
    running = start_v2_server({"tail": model})
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 8)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    direct = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y1, y2 = direct.run(["y1", "y2"], {"a": a, "b": b})

    client = tritonclient_grpc.InferenceServerClient(url=running.target)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tail")
        metadata = client.get_model_metadata("tail")
        assert [t.name for t in metadata.inputs] == ["a", "b"]
        inputs = [
            tritonclient_grpc.InferInput("a", list(a.shape), "FP32"),
            tritonclient_grpc.InferInput("b", list(b.shape), "FP32"),
        ]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("tail", inputs, outputs=[tritonclient_grpc.InferRequestedOutput("y2")])
        np.testing.assert_allclose(result.as_numpy("y2"), y2, rtol=1e-6, atol=1e-7)
        assert result.as_numpy("y1") is None  # only what was asked
        everything = client.infer("tail", inputs)
        np.testing.assert_allclose(everything.as_numpy("y1"), y1, rtol=1e-6, atol=1e-7)
        response = everything.get_response()
        assert response.parameters["splitinf_compute_ns"].int64_param > 0
        with pytest.raises(tritonclient_grpc.InferenceServerException, match="StatusCode.NOT_FOUND"):
            client.infer("ghost", inputs)
    finally:
        client.close()
