"""Tail-server benchmark: throughput and latency, overhead against a bare gRPC server, dynamic batching.

Run:  python benchmarks/bench_server.py [--requests 100] [--repeats 5] [--overhead-only] [--quick]

Every request carries a [1, 256, 28, 28] float32 tensor (802,816 bytes: a ResNet-50
mid-network activation). Servers run in their own processes (so the client threads do
not share a GIL with them), on 127.0.0.1:

- ``splitinf serve`` with two tails: ``small`` (GlobalAveragePool -> Gemm 256x10: almost no
  compute, so the server's own overhead shows) and ``conv`` (Conv 3x3 256->64, Relu,
  GlobalAveragePool, Gemm: real compute, where batching can pay);
- ``bare``: a grpcio server with an identity (de)serializer and no model: it receives the
  request bytes as one Python ``bytes`` object and answers with prebuilt bytes of the same
  size as splitinf's answer. This is "a bare gRPC echo of the same bytes": grpcio's own
  per-message floor in Python.
- ``bare-pb``: the same, but through the generated protobuf code the way a minimal V2
  server would: ``ModelInferRequest.FromString``, read ``raw_input_contents[0]``, serialize a
  ``ModelInferResponse`` of the same size as splitinf's answer. Shown for reference.
- ``bare-aio``: ``bare`` on grpcio's asyncio server, the other floor grpcio offers;
  ``best bare`` takes, run by run, whichever of ``bare`` and ``bare-aio`` was faster.
- ``bare-ort``: the least a V2 server that computes must do (grpcio's thread-pool server
  like splitinf's, parse, one onnxruntime run of the same tail with splitinf's session settings, answer). On a small
  machine the compute's CPU time delays the other clients' calls, which subtracting the
  compute p50 cannot remove: ``bare-ort`` vs ``best bare`` is that floor, and ``splitinf``
  vs ``bare-ort`` is splitinf's own overhead.
- ``no-ort``: the splitinf server itself, but every onnxruntime run after warm-up returns
  the model's first answer: splitinf's own per-call cost (parse, validation, admission,
  metrics, response) with no compute in it.
- ``bare`` and ``bare-pb`` run with the process-wide malloc settings the splitinf server
  applies (``splitinf.cloud.app.tune_allocator``), so the comparison is of the servers, not of
  allocator settings; ``bare-glibc`` is ``bare`` with glibc's defaults (what the overhead
  was measured against before the tuning), shown for reference.

The clients send pre-serialized bytes through the same code path to every server, so the
difference is the server. Per pair of interleaved runs, overhead per call = splitinf p50 -
splitinf's reported compute p50 - bare p50, as a share of the bare p50 (goal: within 10%);
the table reports the median over pairs. Server CPU per call (user + system time of the
server process from /proc, all threads, divided by calls) is shown too, and its ratio to
the bare server's (compute included): it is far less disturbed by other load on a shared
machine than latency is, and with several clients on two cores, where each p50 also holds
other requests' compute, it is the steadier figure.
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
from typing import Any

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from splitinf.contract.manifest import MANIFEST_FORMAT
from splitinf.contract.stats import quantile
from splitinf.offline.partition import write_to_repository

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


def serve_bare(response_size: int, parse: bool, tuned: bool, aio: bool = False) -> None:
    from splitinf.cloud.app import tune_allocator
    from splitinf.protocol import grpc_service_pb2 as pb

    if tuned:
        tune_allocator()  # the same process-wide malloc settings as the splitinf server

    answer = b"\0" * response_size
    # A response of the same serialized size as splitinf's answer (one raw output, padded).
    template = pb.ModelInferResponse(model_name="small", raw_output_contents=[b""])
    template.raw_output_contents[0] = b"\0" * max(0, response_size - template.ByteSize() - 2)

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        return answer

    def handle_pb(request: Any, context: grpc.ServicerContext) -> Any:
        if len(request.raw_input_contents[0]) == 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty")
        response = pb.ModelInferResponse()
        response.CopyFrom(template)
        return response

    method = (
        grpc.unary_unary_rpc_method_handler(
            handle_pb,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelInferResponse.SerializeToString,
        )
        if parse
        else grpc.unary_unary_rpc_method_handler(handle)
    )
    if aio:
        serve_aio(method)
    else:
        serve_sync(method)


def serve_sync(method: grpc.RpcMethodHandler) -> None:
    """Serve ``method`` as ModelInfer on a grpcio thread-pool server (splitinf's kind)."""
    handler = grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": method})
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=72),
        handlers=[handler],
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"serving on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


def serve_aio(method: grpc.RpcMethodHandler) -> None:
    """Serve ``method`` as ModelInfer (its sync function wrapped as a coroutine) on a grpc.aio server."""
    import asyncio

    function = method.unary_unary

    async def call(request: Any, context: Any) -> Any:
        return function(request, context)

    methods = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=method.request_deserializer, response_serializer=method.response_serializer
        )
    }

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", methods),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"serving on 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def serve_bare_onnxruntime(repo: Path) -> None:
    """The least a V2 server that computes must do: parse, one onnxruntime run, answer (grpc.aio).

    The same session settings as splitinf's (``load_repository``), no validation, admission
    or metrics: the gap between this and ``bare`` is the compute's own cost on this machine
    (its CPU time delays the other clients' calls), which subtracting compute p50 cannot remove.
    """
    from splitinf.cloud.app import tune_allocator
    from splitinf.cloud.repository import load_repository
    from splitinf.protocol import COMPUTE_NS_PARAMETER
    from splitinf.protocol import grpc_service_pb2 as pb
    from splitinf.protocol.tensors import parse_infer_request

    tune_allocator()
    session = load_repository(repo)["small"]["1"].session

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        parsed = parse_infer_request(request)
        x = np.frombuffer(parsed.raw_input_contents[0], dtype=np.float32).reshape(parsed.message.inputs[0].shape)
        started = time.perf_counter_ns()
        y = session.run(None, {"x": x})[0]
        compute = time.perf_counter_ns() - started
        response = pb.ModelInferResponse(model_name="small", raw_output_contents=[y.tobytes()])
        response.parameters[COMPUTE_NS_PARAMETER].int64_param = compute
        return response.SerializeToString()

    serve_sync(grpc.unary_unary_rpc_method_handler(handle))


def serve_splitinf_without_onnxruntime(repo: Path) -> None:
    """splitinf's own server with every onnxruntime run after warm-up replaced by its first answer.

    Everything else is the real server (parse, validation, admission, metrics, response), so
    its gap to ``bare`` is splitinf's own per-call cost, with no compute at all in it.
    """
    import threading as _threading

    from splitinf.cloud.app import create_server
    from splitinf.cloud.config import ServerConfig
    from splitinf.cloud.repository import LoadedModel

    real_run = LoadedModel.run
    answers: dict[str, dict[str, np.ndarray]] = {}

    def remembered_run(self: LoadedModel, inputs: Any) -> dict[str, np.ndarray]:
        if self.name not in answers:
            answers[self.name] = real_run(self, inputs)
        return answers[self.name]

    LoadedModel.run = remembered_run  # type: ignore[method-assign]
    server, port = create_server(ServerConfig(repo=repo, port=0, metrics_port=None))
    print(f"serving on 127.0.0.1:{port}", flush=True)
    _threading.Event().wait()


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


def cpu_seconds(pid: int) -> tuple[float, float, int]:
    """User and system CPU time and minor page faults of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick, int(fields[7])


def run_load(port: int, payload: bytes, clients: int, requests: int, pid: int | None = None) -> dict[str, float]:
    """``clients`` threads, each with its own channel, each sending ``requests`` calls back to back.

    With ``pid``, also the server process's CPU time per call during the timed part.
    """
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
    cpu_before = cpu_seconds(pid) if pid is not None else (0.0, 0.0, 0)
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    cpu_after = cpu_seconds(pid) if pid is not None else (0.0, 0.0, 0)
    for channel in channels:
        channel.close()
    return {
        "throughput": len(latencies) / elapsed,
        "p50_ms": 1000 * quantile(latencies, 0.5),
        "p99_ms": 1000 * quantile(latencies, 0.99),
        "compute_p50_ms": statistics.median(computes) / 1e6 if computes else 0.0,
        "cpu_ms": 1000 * (cpu_after[0] + cpu_after[1] - cpu_before[0] - cpu_before[1]),
        "sys_ms": 1000 * (cpu_after[1] - cpu_before[1]),
        "faults": float(cpu_after[2] - cpu_before[2]),
        "calls": float(len(latencies)),
    }


def medians(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


Server = tuple[str, subprocess.Popen[str], int]
# Hidden flags that start each bare server (the value after the first flag is the response size).
BARE_SERVER_FLAGS = {
    "bare": ["--bare-server"],
    "bare-aio": ["--bare-server", "--aio"],
    "bare-pb": ["--bare-pb-server"],
    "bare-glibc": ["--bare-server", "--malloc-defaults"],
}
CLIENT_COUNTS = (1, 4, 16)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100, help="calls per client per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per configuration; medians are reported")
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    parser.add_argument("--overhead-only", action="store_true", help="skip the batching section")
    parser.add_argument("--bare-server", type=int, metavar="RESPONSE_SIZE", help=argparse.SUPPRESS)
    parser.add_argument("--bare-pb-server", type=int, metavar="RESPONSE_SIZE", help=argparse.SUPPRESS)
    parser.add_argument("--malloc-defaults", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--aio", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-ort-server", type=Path, metavar="REPO", help=argparse.SUPPRESS)
    parser.add_argument("--no-ort-server", type=Path, metavar="REPO", help=argparse.SUPPRESS)
    return parser.parse_args()


def serve_if_server_process(args: argparse.Namespace) -> bool:
    """Run the server this process was started as (a hidden flag), if any; True once it has served."""
    if args.no_ort_server is not None:
        serve_splitinf_without_onnxruntime(args.no_ort_server)
        return True
    if args.bare_ort_server is not None:
        serve_bare_onnxruntime(args.bare_ort_server)
        return True
    if args.bare_server is not None or args.bare_pb_server is not None:
        serve_bare(
            args.bare_server or args.bare_pb_server,
            parse=args.bare_pb_server is not None,
            tuned=not args.malloc_defaults,
            aio=args.aio,
        )
        return True
    return False


def print_header(script: Path, requests: int, repeats: int, only_overhead: bool) -> None:
    flags = " --overhead-only" if only_overhead else ""
    print(f"command: python {script.relative_to(script.parents[1])} --requests {requests} --repeats {repeats}{flags}")
    print(f"medians of {repeats} interleaved runs per row")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"tensor: {list(SHAPE)} float32 = {int(np.prod(SHAPE)) * 4:,} bytes per request\n")


def write_repository(repo: Path) -> None:
    for name, model in (("small", tail_small()), ("conv", tail_conv())):
        write_to_repository(model, repo, name, manifest={"format": MANIFEST_FORMAT})


def start_baseline_servers(script: Path, repo: Path, response_size: int, servers: list[Server]) -> None:
    """Start no-ort, the bare servers and bare-ort, appending each to servers as it starts."""
    process, no_ort_port = start([sys.executable, str(script), "--no-ort-server", str(repo)])
    servers.append(("no-ort", process, no_ort_port))
    for label, bare_flags in BARE_SERVER_FLAGS.items():
        command = [sys.executable, str(script), bare_flags[0], str(response_size), *bare_flags[1:]]
        process, bare_port = start(command)
        servers.append((label, process, bare_port))
    process, bare_ort_port = start([sys.executable, str(script), "--bare-ort-server", str(repo)])
    servers.append(("bare-ort", process, bare_ort_port))


def print_server_rows(clients: int, servers: list[Server], overhead_runs: dict[str, list[dict[str, float]]]) -> None:
    for label, _, _ in servers:
        row = medians(overhead_runs[label])
        calls = sum(r["calls"] for r in overhead_runs[label])
        cpu_per_call = sum(r["cpu_ms"] for r in overhead_runs[label]) / calls
        sys_per_call = sum(r["sys_ms"] for r in overhead_runs[label]) / calls
        faults_per_call = sum(r["faults"] for r in overhead_runs[label]) / calls
        print(
            f"{clients:>7} {label:>10} {row['throughput']:>8.1f} {row['p50_ms']:>8.2f} "
            f"{row['p99_ms']:>8.2f} {row['compute_p50_ms']:>10.3f}ms {cpu_per_call:>7.3f}ms "
            f"{sys_per_call:>5.3f}ms {faults_per_call:>11.1f}"
        )


def print_overhead_comparisons(overhead_runs: dict[str, list[dict[str, float]]]) -> None:
    # Per run, whichever bare echo (grpcio's thread-pool or asyncio server) was faster.
    overhead_runs["best bare"] = [
        min(rows, key=lambda r: r["p50_ms"])
        for rows in zip(overhead_runs["bare"], overhead_runs["bare-aio"], strict=True)
    ]
    comparisons = [("splitinf", bare) for bare in [*BARE_SERVER_FLAGS, "best bare", "bare-ort"]]
    comparisons += [("no-ort", "best bare"), ("bare-ort", "best bare")]
    for ours_label, label in comparisons:
        ours = overhead_runs[ours_label]
        pairs = [  # compute excluded on both sides (only bare-ort's base has any)
            (o["p50_ms"] - o["compute_p50_ms"] - (b["p50_ms"] - b["compute_p50_ms"]))
            / (b["p50_ms"] - b["compute_p50_ms"])
            for o, b in zip(ours, overhead_runs[label], strict=True)
        ]
        print(
            f"{'':>7} {ours_label} overhead per call vs {label} (p50, compute excluded): "
            f"{100 * statistics.median(pairs):+.1f}% (median of {len(pairs)} pairs; "
            f"range {100 * min(pairs):+.0f}% .. {100 * max(pairs):+.0f}%)"
        )
        cpu_ratio = sum(r["cpu_ms"] for r in ours) / max(1e-9, sum(r["cpu_ms"] for r in overhead_runs[label]))
        print(
            f"{'':>7}   {ours_label} server CPU per call vs {label} (compute included): {100 * (cpu_ratio - 1):+.1f}%"
        )


def compare_overhead(servers: list[Server], payload: bytes, requests: int, repeats: int) -> None:
    print("1) splitinf (tail 'small') vs bare gRPC servers, same request bytes")
    print(
        f"{'clients':>7} {'server':>10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'compute p50':>12} "
        f"{'CPU/call':>9} {'sys':>7} {'faults/call':>11}"
    )
    for clients in CLIENT_COUNTS:
        overhead_runs: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in servers}
        for _ in range(repeats):  # interleaved, so all see the same background load
            for label, process, server_port in servers:
                row = run_load(server_port, payload, clients, requests, process.pid)
                overhead_runs[label].append(row)
        print_server_rows(clients, servers, overhead_runs)
        print_overhead_comparisons(overhead_runs)


def run_overhead_section(script: Path, repo: Path, serve: list[str], requests: int, repeats: int) -> None:
    small_payload = request_bytes("small")
    splitinf_server, port = start(serve)
    servers: list[Server] = [("splitinf", splitinf_server, port)]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            response_size = len(channel.unary_unary(INFER_PATH)(small_payload, timeout=60))
        start_baseline_servers(script, repo, response_size, servers)
        compare_overhead(servers, small_payload, requests, repeats)
    finally:
        for _, process, _ in servers:
            process.terminate()
            process.wait()


def run_batching_section(serve: list[str], requests: int, repeats: int) -> None:
    conv_payload = request_bytes("conv")
    print("\n2) dynamic batching on tail 'conv' (max batch 8, max delay 2 ms) vs off")
    print(f"{'clients':>7} {'batching':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    runs: dict[tuple[int, str], list[dict[str, float]]] = {}
    off_server, off_port = start(serve)
    on_server, on_port = start(serve + ["--max-batch", "8", "--batch-delay-ms", "2"])
    try:
        for clients in CLIENT_COUNTS:
            for _ in range(repeats):
                for label, conv_port in (("off", off_port), ("on", on_port)):
                    row = run_load(conv_port, conv_payload, clients, max(4, requests // 2))
                    runs.setdefault((clients, label), []).append(row)
            for label in ("off", "on"):
                row = medians(runs[(clients, label)])
                print(f"{clients:>7} {label:>9} {row['throughput']:>8.1f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}")
    finally:
        for server in (off_server, on_server):
            server.terminate()
            server.wait()
    results = {key: medians(rows) for key, rows in runs.items()}
    for clients in CLIENT_COUNTS:
        gain = results[(clients, "on")]["throughput"] / results[(clients, "off")]["throughput"]
        print(f"throughput with batching / without, {clients:>2} clients: {gain:.2f}x")


def main() -> int:
    args = parse_args()
    if serve_if_server_process(args):
        return 0
    requests = 8 if args.quick else args.requests
    repeats = 1 if args.quick else args.repeats
    script = Path(__file__).resolve()
    print_header(script, requests, repeats, args.overhead_only)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        write_repository(repo)
        serve = [sys.executable, "-m", "splitinf", "serve", "--repo", str(repo), "--port", "0", "--metrics-port", "-1"]
        run_overhead_section(script, repo, serve, requests, repeats)
        if not args.overhead_only:
            run_batching_section(serve, requests, repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
