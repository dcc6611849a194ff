"""The device's client overhead: a V2 ModelInfer call against a bare gRPC echo of the same bytes.

    python benchmarks/bench_client.py [--cpus 0.15] [--requests 60] [--no-cpu-limit]

Three processes: a tail server (``splitinf serve``, no limit), a bare gRPC echo
(``splitinf.tools.bench.echo``, no limit) and the emulated Pi (this script with ``--worker``,
in a cgroup with a CPU quota of ``--cpus``: ``splitinf.tools.bench.cgroup``). The device sends
a 1x3x224x224 fp32 tensor (602 kB, a ResNet input) to a tail that answers with 3 floats, then
an echo of exactly the request's and the answer's byte counts, interleaved. The V2 time is the
call's round trip minus the server's reported compute time (as the bench harness counts it).
Each timed call starts after 30 ms idle, with the cgroup's quota refilled.

Printed: the command, the emulation, and per client the median V2 time, the median echo time
and the median of the per-pair ratios of one run:
- ``InferenceClient.infer``: the device's client (requests serialized from the arrays'
  buffers, ``splitinf.protocol.tensors.encode_infer_request``);
- ``protobuf``: the same call with the request built as a protobuf message (``encode_request``
  and the generated stub), the way the client sent it before.
Target (issue 15): InferenceClient / echo <= 1.3 on the emulated Pi.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SHAPE = (1, 3, 224, 224)
MODEL = "pool"
# Idle time before each timed call: the CFS quota refills (3 periods of 10 ms), so a call is never
# charged for the CPU the previous one used, which would make the order of the calls the result.
REFILL_S = 0.03


def _tail_model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])],
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True)
    onnx.save(model, path)


def worker(target: str, echo_target: str, requests: int) -> dict[str, Any]:
    """Runs in the CPU-limited process: interleaved V2 calls (two encodings) and echoes."""
    from splitinf.edge.client import InferenceClient
    from splitinf.protocol import COMPUTE_NS_PARAMETER
    from splitinf.protocol import grpc_service_pb2 as pb
    from splitinf.protocol.tensors import encode_request
    from splitinf.tools.bench.echo import EchoClient

    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    client = InferenceClient(target)
    stub = client._stub  # the generated stub: protobuf serializes the whole message
    echo = EchoClient(echo_target)

    def v2() -> tuple[float, int, int]:
        started = time.perf_counter()
        answer = client.infer(MODEL, {"x": x}, timeout_s=30.0)
        return time.perf_counter() - started - answer.server_compute_s, answer.request_bytes, answer.response_bytes

    def protobuf() -> tuple[float, int, int]:
        started = time.perf_counter()
        request = encode_request(pb.ModelInferRequest(model_name=MODEL), {"x": x})
        response = stub.ModelInfer(request, timeout=30.0)
        elapsed = time.perf_counter() - started - response.parameters[COMPUTE_NS_PARAMETER].int64_param / 1e9
        return elapsed, request.ByteSize(), response.ByteSize()

    samples: dict[str, list[tuple[float, float]]] = {"InferenceClient.infer": [], "protobuf": []}
    sizes = (0, 0)
    for i in range(5 + requests):
        for name, call in (("InferenceClient.infer", v2), ("protobuf", protobuf)):
            time.sleep(REFILL_S)
            call_s, request_bytes, response_bytes = call()
            sizes = (request_bytes, response_bytes)
            time.sleep(REFILL_S)
            echo_s = echo.round_trip(request_bytes, response_bytes)
            if i >= 5:
                samples[name].append((call_s, echo_s))
    client.close()
    echo.close()
    with open("/proc/self/cgroup") as f:
        cgroups = f.read().split()
    return {"samples": samples, "request_bytes": sizes[0], "response_bytes": sizes[1], "cgroups": cgroups}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=float, default=0.15, help="the emulated Pi's CPU quota")
    parser.add_argument("--no-cpu-limit", action="store_true", help="run the device without a CPU quota")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--worker", nargs=2, metavar=("TARGET", "ECHO"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.requests)), flush=True)
        return 0

    from splitinf.errors import UsageError
    from splitinf.tools.bench.cgroup import create_cpu_cgroup
    from splitinf.tools.bench.harness import _start_subprocess, _stop

    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    group = None
    if not args.no_cpu_limit:
        try:
            group = create_cpu_cgroup(args.cpus)
        except UsageError as exc:
            print(f"no CPU limit possible ({exc}); the device runs unlimited", flush=True)
    emulation = "none (device unlimited)" if group is None else json.dumps(group.describe())
    print("emulation:", emulation, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        _tail_model(repo / MODEL / "1" / "model.onnx")
        server, target = _start_subprocess(
            [sys.executable, "-m", "splitinf", "serve", "--repo", str(repo), "--port", "0", "--metrics-port", "-1"],
            "serving on ",
            "tail server",
        )
        echo, echo_target = _start_subprocess(
            [sys.executable, "-m", "splitinf.tools.bench.echo", "--port", "0"], "echo on ", "echo server"
        )
        try:
            argv = [sys.executable, __file__, "--worker", target, echo_target, "--requests", str(args.requests)]
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                check=True,
                preexec_fn=group.join_preexec() if group is not None else None,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            _stop(server)
            _stop(echo)
            if group is not None:
                print("cpu.stat:", group.stats(), flush=True)
                group.remove()
    print(f"device cgroups: {[c for c in result['cgroups'] if 'cpu' in c]}")
    print(f"request {result['request_bytes']} B, response {result['response_bytes']} B, {args.requests} pairs")
    print(f"{'client':24} {'V2 median ms':>13} {'echo median ms':>15} {'median ratio':>13}")
    for name, pairs in result["samples"].items():
        ratio = statistics.median(call / echo for call, echo in pairs)
        call_ms = statistics.median(call for call, _ in pairs) * 1e3
        echo_ms = statistics.median(echo for _, echo in pairs) * 1e3
        print(f"{name:24} {call_ms:13.2f} {echo_ms:15.2f} {ratio:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
