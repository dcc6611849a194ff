"""`splitinf serve` as a real process: it prints its port, and SIGTERM drains with a call in flight."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitinf.protocol import encode_request
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc
from splitinf.tools.testing.graphs import mlp


def poll(predicate: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    pause = threading.Event()
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return True
        pause.wait(0.02)
    return False


class ServeProcess:
    def __init__(self, *args: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "splitinf", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def expect(self, pattern: str, timeout_s: float = 60.0) -> re.Match[str]:
        while True:
            try:
                line = self.lines.get(timeout=timeout_s)
            except queue.Empty:
                self.process.kill()
                pytest.fail(f"`splitinf serve` did not print {pattern!r}; stderr: {self.process.stderr.read()}")  # type: ignore[union-attr]
            match = re.search(pattern, line)
            if match:
                return match

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


def test_sigterm_drains_calls_in_flight_then_exits_0(write_v2_repository: Callable[..., Path], tmp_path: Path) -> None:
    repo = write_v2_repository(tmp_path / "repo", {"mlp": mlp()})
    # The batching delay holds a call inside the server: a call in flight we can see and wait for.
    config = tmp_path / "server.toml"
    config.write_text("[batching]\nmax_batch_size = 4\nmax_queue_delay_ms = 3000.0\nwait_when_idle = true\n")
    serve = ServeProcess(
        "--repo", str(repo), "--config", str(config), "--port", "0", "--metrics-port", "0", "--drain-grace", "20"
    )  # fmt: skip
    try:
        port = int(serve.expect(r"serving on 127\.0\.0\.1:(\d+)").group(1))
        metrics_url = serve.expect(r"metrics on (http://\S+)").group(1)
        x = np.ones((1, 16), np.float32)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            in_flight = stub.ModelInfer.future(
                encode_request(pb.ModelInferRequest(model_name="mlp"), {"x": x}), timeout=30
            )
            assert poll(lambda: "splitinf_inflight_requests 1.0" in urllib.request.urlopen(metrics_url).read().decode())

            os.kill(serve.process.pid, signal.SIGTERM)
            serve.expect("draining")
            check = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
            assert poll(lambda: health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(encode_request(pb.ModelInferRequest(model_name="mlp"), {"x": x}), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in str(refused.value.details())
            assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready

            response = in_flight.result(timeout=30)
            assert response.model_name == "mlp" and len(response.raw_output_contents) == 1
        assert serve.process.wait(timeout=30) == 0
        serve.expect(r"^stopped$")
    finally:
        serve.close()


def test_serve_reports_a_bad_repository_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "splitinf", "serve", "--repo", str(tmp_path), "--port", "0", "--metrics-port", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "holds no models" in result.stderr and "Traceback" not in result.stderr
