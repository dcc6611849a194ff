"""The tail server under hostile input, exhaustion and abandoned work (issue 14): the figures for its closing note.

    python benchmarks/adversarial_server.py [--streams N] [--large-batch B]

Starts a real tail server in a process of its own (so its RSS is its own) on loopback, port 0,
with a signed repository (mlp, an INT8 identity, the shipped digits CNN, a slow MatMul chain),
then prints:

1. each kind of bad request tried and the status it was answered with;
2. the server's RSS at its steady level, after the largest legal request (--large-batch digits,
   ~61 MB of tensors) and after 30 small requests more;
3. how many idle ModelStreamInfer streams one client opened (--streams) and held, and whether
   health answered SERVING, ServerLive answered and another client's inference was answered meanwhile;
4. of 20 requests with 1 s deadlines behind the slow model, how many were computed after their
   deadline (the server's compute count minus the answers the client received in time), and how
   long a request sent after them waited.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitinf.contract.manifest import MANIFEST_FORMAT
from splitinf.offline.partition import write_to_repository
from splitinf.protocol import encode_request
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc
from splitinf.tools.models import digits_main_path
from splitinf.tools.testing.graphs import int8_identity, matmul_chain, mlp
from splitinf.tools.testing.servers import ServerProcess, rss_mib

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
SLOW_SIZE = 512
STREAMS_PER_CLIENT = 8


def metric(metrics_port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def request(model: str, **inputs: np.ndarray) -> pb.ModelInferRequest:
    return encode_request(pb.ModelInferRequest(model_name=model), inputs)


def bad_requests() -> list[tuple[str, str, Any]]:
    """(kind, method, request: a message or raw bytes)."""
    x = np.ones((1, 16), np.float32)
    both = request("mlp", x=x)
    both.inputs[0].contents.fp32_contents.extend([2.0] * 16)
    int8 = pb.ModelInferRequest(model_name="int8")
    int8.inputs.add(name="x", datatype="INT8", shape=[2]).contents.int_contents.extend([1000, 1])
    short = request("mlp", x=x)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    twice = request("mlp", x=x)
    twice.inputs.add().CopyFrom(twice.inputs[0])
    twice.raw_input_contents.append(twice.raw_input_contents[0])
    strings = pb.ModelInferRequest(model_name="mlp")
    strings.inputs.add(name="x", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"a")
    negative = pb.ModelInferRequest(model_name="mlp")
    negative.inputs.add(name="x", datatype="FP32", shape=[-1, 16])
    negative.raw_input_contents.append(b"")
    too_big = request("mlp", x=np.ones((1_060_000, 16), np.float32))
    return [
        ("truncated protobuf (ModelInfer)", "ModelInfer", b"\x0a\xff\xff\xff\xff\x0f"),
        ("truncated protobuf (ServerLive)", "ServerLive", b"\x0a\xff"),
        ("1 MB model name", "ModelInfer", request("m" * 1_000_000, x=x)),
        ("unknown model", "ModelInfer", request("nope", x=x)),
        ("100 kB version string", "ModelMetadata", pb.ModelMetadataRequest(name="mlp", version="9" * 100_000)),
        ("raw and typed contents together", "ModelInfer", both),
        ("INT8 typed contents of 1000", "ModelInfer", int8),
        ("raw contents 4 bytes short", "ModelInfer", short),
        ("one tensor twice", "ModelInfer", twice),
        ("BYTES datatype", "ModelInfer", strings),
        ("negative dimension", "ModelInfer", negative),
        ("wrong datatype (FP64)", "ModelInfer", request("mlp", x=x.astype(np.float64))),
        ("wrong shape", "ModelInfer", request("mlp", x=np.ones((1, 15), np.float32))),
        ("missing input", "ModelInfer", pb.ModelInferRequest(model_name="mlp")),
        ("batch over the fixed batch (int8: 2)", "ModelInfer", request("int8", x=np.ones(3, np.int8))),
        ("message over max_message_bytes (68 MB)", "ModelInfer", too_big),
    ]


def try_bad_requests(channel: grpc.Channel) -> None:
    print("1. bad requests and their answers")
    for kind, method, message in bad_requests():
        call = channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}", request_serializer=None, response_deserializer=None
        )
        data = message if isinstance(message, bytes) else message.SerializeToString()
        try:
            call(data, timeout=30)
            answer = "OK (!)"
        except grpc.RpcError as exc:
            details = str(exc.details())
            answer = f"{exc.code().name}: {details[:90]}{'...' if len(details) > 90 else ''} [{len(details)} chars]"
        print(f"   {kind:40s} -> {answer}")


def measure_memory(stub: pb_grpc.GRPCInferenceServiceStub, pid: int, large_batch: int) -> None:
    def infer(batch: int) -> None:
        stub.ModelInfer(request("digits", image=np.ones((batch, 1, 8, 8), np.float32)), timeout=300)

    for _ in range(30):
        infer(1)
    steady = rss_mib(pid)
    infer(large_batch)
    right_after = rss_mib(pid)
    for _ in range(30):
        infer(1)
    after = rss_mib(pid)
    print("2. memory (server RSS)")
    print(f"   steady {steady:.0f} MiB; right after a {large_batch}-digit request ({large_batch * 256 / 1e6:.1f} MB):")
    print(f"   {right_after:.0f} MiB; after 30 small requests more {after:.0f} MiB ({after / steady - 1:+.1%})")


class IdleStream:
    def __init__(self, stub: pb_grpc.GRPCInferenceServiceStub):
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.call = stub.ModelStreamInfer(self._iterate(), timeout=120)
        self.done = threading.Event()
        self.call.add_done_callback(lambda _call: self.done.set())

    def _iterate(self) -> Iterator[pb.ModelInferRequest]:
        while (item := self._requests.get()) is not None:
            yield item

    def end(self) -> None:
        self._requests.put(None)
        self.call.cancel()


def hold_streams(target: str, attempts: int) -> None:
    with grpc.insecure_channel(target) as hog, grpc.insecure_channel(target) as other:
        streams = [IdleStream(pb_grpc.GRPCInferenceServiceStub(hog)) for _ in range(attempts)]
        try:
            time.sleep(1.0)  # let every refusal arrive: a figure, not a test
            held = sum(1 for s in streams if not s.done.is_set())
            refused = {s.call.code().name for s in streams if s.done.is_set()}
            health = health_pb2_grpc.HealthStub(other).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            other_stub = pb_grpc.GRPCInferenceServiceStub(other)
            live = other_stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
            started = time.perf_counter()
            other_stub.ModelInfer(request("mlp", x=np.ones((1, 16), np.float32)), timeout=10)
            infer_ms = (time.perf_counter() - started) * 1000
        finally:
            for stream in streams:
                stream.end()
    print("3. streams one client can hold")
    print(f"   opened {attempts} idle streams from one client: {held} held, the rest refused {sorted(refused)}")
    print(f"   meanwhile: health {health_pb2.HealthCheckResponse.ServingStatus.Name(health)}, ServerLive {live},")
    print(f"   another client's inference answered in {infer_ms:.1f} ms")


def abandoned_work(stub: pb_grpc.GRPCInferenceServiceStub, metrics_port: int) -> None:
    slow = request("slow", x=np.ones((SLOW_SIZE, SLOW_SIZE), np.float32))
    started = time.perf_counter()
    stub.ModelInfer(slow, timeout=60)
    one_run_s = time.perf_counter() - started
    computed_before = metric(metrics_port, 'splitinf_compute_seconds_count{model="slow"}')
    calls = [stub.ModelInfer.future(slow, timeout=1.0) for _ in range(20)]
    in_time = sum(1 for call in calls if call.exception() is None)
    started = time.perf_counter()
    stub.ModelInfer(slow, timeout=60)
    next_s = time.perf_counter() - started
    computed = metric(metrics_port, 'splitinf_compute_seconds_count{model="slow"}') - computed_before - 1
    dropped = metric(metrics_port, 'splitinf_requests_dropped_total{model="slow"')
    print("4. abandoned work")
    print(f"   slow model: {one_run_s:.2f} s per run; 20 requests with 1 s deadlines: {in_time} answered in time,")
    late = computed - in_time
    print(f"   {computed:.0f} computed, {late:.0f} computed after their deadline, {dropped:.0f} dropped unrun;")
    print(f"   the request sent after them waited {next_s:.2f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=80, help="idle streams one client tries to open")
    parser.add_argument("--large-batch", type=int, default=240_000, help="digits in the largest legal request")
    args = parser.parse_args(argv)
    print(f"command: {' '.join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        models: dict[str, Callable[[], onnx.ModelProto]] = {
            "mlp": mlp,
            "int8": int8_identity,
            "digits": lambda: onnx.load(digits_main_path()),
            "slow": lambda: matmul_chain(64, SLOW_SIZE),
        }
        for name, build in models.items():
            write_to_repository(build(), tmp, name, manifest={"format": MANIFEST_FORMAT})
        config = {"intra_op_threads": 1, "max_streams_per_client": STREAMS_PER_CLIENT}
        with ServerProcess(tmp, **config, max_streams=4 * STREAMS_PER_CLIENT) as server:
            pid = server.process.pid
            print(f"server: pid {pid}, {server.target}, max_streams_per_client {STREAMS_PER_CLIENT}, 64 MiB limits")
            options = [("grpc.max_receive_message_length", 128 * MIB), ("grpc.max_send_message_length", 128 * MIB)]
            with grpc.insecure_channel(server.target, options=options) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                try_bad_requests(channel)
                measure_memory(stub, pid, args.large_batch)
                hold_streams(server.target, args.streams)
                abandoned_work(stub, server.metrics_port)


if __name__ == "__main__":
    main()
