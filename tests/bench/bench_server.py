"""Tail-server benchmark: throughput and latency, overhead against a bare gRPC server, dynamic batching.

Run:  python tests/bench/bench_server.py [--requests 40] [--quick]

Every request carries a [1, 256, 28, 28] float32 tensor (802,816 bytes: a ResNet-50
mid-network activation). Servers run in their own processes (so the client threads do
not share a GIL with them), on 127.0.0.1:

- ``splitinf serve`` with two tails: ``small`` (GlobalAveragePool -> Gemm 256x10: almost no
  compute, so the server's own overhead shows) and ``conv`` (Conv 3x3 256->64, Relu,
  GlobalAveragePool, Gemm: real compute, where batching can pay);
- a bare gRPC server (no protobuf parsing, no model) that reads the same request bytes and
  answers with bytes of the same size as splitinf's answer: the transport floor.

The clients send pre-serialized bytes through the same code path to both servers, so the
difference is the server. Overhead per call = splitinf p50 - splitinf's reported compute
p50 - bare p50, as a share of the bare p50 (goal: within 10%). Figures on a shared
2-core machine are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SHAPE = (1, 256, 28, 28)
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


def tail_small() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((256, 10)).astype(np.float32) * 0.05, "w")
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "tail_small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=[w],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def tail_conv() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    k = numpy_helper.from_array(rng.standard_normal((64, 256, 3, 3)).astype(np.float32) * 0.02, "k")
    w = numpy_helper.from_array(rng.standard_normal((64, 10)).astype(np.float32) * 0.05, "w")
    nodes = [
        helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "tail_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=[k, w],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# --- bare server (its own process) ---------------------------------------------------------------


def serve_bare(response_size: int) -> None:
    answer = b"\0" * response_size

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        return answer

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(handle)}
    )
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=72),
        handlers=[handler],
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"serving on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


# --- clients -------------------------------------------------------------------------------------


def start(command: list[str]) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
        if match:
            return process, int(match.group(1))
    raise RuntimeError(f"{command} did not start")


def request_bytes(model: str) -> bytes:
    from splitinf.protocol import encode_request
    from splitinf.protocol import grpc_service_pb2 as pb

    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    return encode_request(pb.ModelInferRequest(model_name=model), {"x": x}).SerializeToString()


def compute_ns(response: bytes) -> int:
    from splitinf.protocol import grpc_service_pb2 as pb

    parsed = pb.ModelInferResponse.FromString(response)
    return int(parsed.parameters["splitinf_compute_ns"].int64_param)


def run_load(port: int, payload: bytes, clients: int, requests: int) -> dict[str, float]:
    """``clients`` threads, each with its own channel, each sending ``requests`` calls back to back."""
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(clients)]
    calls: list[Callable[..., bytes]] = [c.unary_unary(INFER_PATH) for c in channels]
    for call in calls:  # connect and warm up
        for _ in range(3):
            call(payload, timeout=60)
    latencies: list[float] = []
    computes: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(call: Callable[..., bytes]) -> None:
        mine, mine_compute = [], []
        barrier.wait()
        for _ in range(requests):
            started = time.perf_counter()
            response = call(payload, timeout=60)
            mine.append(time.perf_counter() - started)
            mine_compute.append(response)
        with lock:
            latencies.extend(mine)
            computes.extend(compute_ns(r) if len(r) > 0 and r[:1] != b"\0" else 0 for r in mine_compute)

    threads = [threading.Thread(target=client, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    for channel in channels:
        channel.close()
    latencies.sort()
    return {
        "throughput": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "compute_p50_ms": statistics.median(computes) / 1e6 if computes else 0.0,
    }


def medians(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="calls per client per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration; medians are reported")
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    parser.add_argument("--bare-server", type=int, metavar="RESPONSE_SIZE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server is not None:
        serve_bare(args.bare_server)
        return 0
    requests = 8 if args.quick else args.requests
    repeats = 1 if args.quick else args.repeats
    here = Path(__file__).resolve()
    print(f"command: python {here.relative_to(here.parents[2])} --requests {requests} --repeats {repeats}")
    print(f"medians of {repeats} interleaved runs per row")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"tensor: {list(SHAPE)} float32 = {int(np.prod(SHAPE)) * 4:,} bytes per request\n")

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        for name, model in (("small", tail_small()), ("conv", tail_conv())):
            (repo / name / "1").mkdir(parents=True)
            onnx.save(model, repo / name / "1" / "model.onnx")
        serve = [sys.executable, "-m", "splitinf", "serve", "--repo", str(repo), "--port", "0", "--metrics-port", "-1"]
        small_payload, conv_payload = request_bytes("small"), request_bytes("conv")

        splitinf_server, port = start(serve)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                response_size = len(channel.unary_unary(INFER_PATH)(small_payload, timeout=60))
            bare_server, bare_port = start([sys.executable, str(here), "--bare-server", str(response_size)])
            try:
                print("1) splitinf (tail 'small') vs a bare gRPC server, same request bytes")
                print(f"{'clients':>7} {'server':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'compute p50':>12}")
                overheads = []
                for clients in (1, 4, 16):
                    bare_runs, our_runs = [], []
                    for _ in range(repeats):  # interleaved, so both see the same background load
                        bare_runs.append(run_load(bare_port, small_payload, clients, requests))
                        our_runs.append(run_load(port, small_payload, clients, requests))
                    bare, ours = medians(bare_runs), medians(our_runs)
                    for label, row in (("bare", bare), ("splitinf", ours)):
                        print(
                            f"{clients:>7} {label:>9} {row['throughput']:>8.1f} {row['p50_ms']:>8.2f} "
                            f"{row['p99_ms']:>8.2f} {row['compute_p50_ms']:>10.3f}ms"
                        )
                    overhead = (ours["p50_ms"] - ours["compute_p50_ms"] - bare["p50_ms"]) / bare["p50_ms"]
                    overheads.append(overhead)
                    print(f"{'':>7} overhead per call (p50, compute excluded): {100 * overhead:+.1f}% of bare")
            finally:
                bare_server.terminate()
                bare_server.wait()
        finally:
            splitinf_server.terminate()
            splitinf_server.wait()

        print("\n2) dynamic batching on tail 'conv' (max batch 8, max delay 2 ms) vs off")
        print(f"{'clients':>7} {'batching':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
        runs: dict[tuple[int, str], list[dict[str, float]]] = {}
        off_server, off_port = start(serve)
        on_server, on_port = start(serve + ["--max-batch", "8", "--batch-delay-ms", "2"])
        try:
            for clients in (1, 4, 16):
                for _ in range(repeats):
                    for label, conv_port in (("off", off_port), ("on", on_port)):
                        row = run_load(conv_port, conv_payload, clients, max(4, requests // 2))
                        runs.setdefault((clients, label), []).append(row)
                for label in ("off", "on"):
                    row = medians(runs[(clients, label)])
                    print(
                        f"{clients:>7} {label:>9} {row['throughput']:>8.1f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}"
                    )
        finally:
            for server in (off_server, on_server):
                server.terminate()
                server.wait()
        results = {key: medians(rows) for key, rows in runs.items()}
        for clients in (1, 4, 16):
            gain = results[(clients, "on")]["throughput"] / results[(clients, "off")]["throughput"]
            print(f"throughput with batching / without, {clients:>2} clients: {gain:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
