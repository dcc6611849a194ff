"""Throughput of ``Runtime.infer_stream`` (head of i+1 overlaps network + tail of i) vs one at a time.

    python benchmarks/bench_stream.py [--requests N] [--repeats R] [--latency-ms L] [--workers W]

A wide MLP is cut in the middle; its tail is served by a real tail server on loopback behind
the fault proxy, which adds ``--latency-ms`` each way (a LAN-like link). The same runtime
answers the same inputs sequentially and streamed, alternating, ``--repeats`` times; the
script prints requests per second of each and their ratio (median over repeats). All from one
run on one machine: compare the ratio, not the absolute figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from splitinf.cloud.app import create_server
from splitinf.cloud.config import ServerConfig
from splitinf.contract.files import sha256_file, write_json_atomic
from splitinf.contract.manifest import MANIFEST_FORMAT
from splitinf.contract.plan import Option, Plan
from splitinf.contract.tensors import TensorSpec
from splitinf.edge.config import DeviceConfig
from splitinf.edge.policy import PolicyConfig
from splitinf.edge.runtime import Runtime
from splitinf.offline.graph import find_cut
from splitinf.offline.partition import split_model, write_to_repository
from splitinf.tools.faults.proxy import DirectionFaults, FaultProxy, FaultSettings
from splitinf.tools.testing.graphs import mlp

SIZES = (1024, 2048, 2048, 2048, 2048, 10)


def save(model: onnx.ModelProto, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return sha256_file(path)


def build_plan(root: Path) -> Path:
    full = mlp(batch=1, sizes=SIZES)
    cut = find_cut(full, "relu_1")  # two layers on each side
    part = split_model(full, cut)
    head_sha = save(part.head, root / "device/heads/mid.onnx")
    tail_path = write_to_repository(part.tail, root / "server", "wide.mid", manifest={"format": MANIFEST_FORMAT})
    tail_sha = sha256_file(tail_path)
    fallback_sha = save(mlp(batch=1, sizes=(1024, 16, 10)), root / "device/fallback.onnx")
    options = (
        Option(
            id="split:mid:fp32",
            kind="split",
            accuracy=0.99,
            cut_id=cut.id,
            codec="fp32",
            head=("device/heads/mid.onnx",),  # one file: a chain of one
            head_sha256=(head_sha,),
            tail_model="wide.mid",
            tail_sha256=tail_sha,
            wire=cut.tensors,
            wire_bytes=cut.bytes_per_sample,
        ),
        Option(
            id="fallback",
            kind="fallback",
            accuracy=0.5,
            model=("device/fallback.onnx",),
            sha256=(fallback_sha,),
            seconds=1e-4,
        ),
    )
    plan = Plan(
        "wide", "0" * 64, (TensorSpec("x", "float32", (1, SIZES[0])),), (TensorSpec("y", "float32", (1, 10)),), options
    )
    write_json_atomic(root / "plan.json", plan.to_json())
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=5.0, help="added by the proxy in each direction")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print("command: python benchmarks/bench_stream.py " + " ".join(sys.argv[1:]))
    print(f"model: MLP {SIZES}, cut after layer 2; proxy latency {args.latency_ms} ms each way; 1 ORT thread/session")

    with tempfile.TemporaryDirectory() as tmp:
        plan_dir = build_plan(Path(tmp) / "plan")
        server, port = create_server(
            ServerConfig(repo=plan_dir / "server", port=0, metrics_port=None, intra_op_threads=1)
        )
        proxy = FaultProxy(f"127.0.0.1:{port}").start()
        link = DirectionFaults(latency_ms=args.latency_ms)
        proxy.set(FaultSettings(upstream=link, downstream=link))
        config = DeviceConfig(
            server=proxy.address,
            budget_s=5.0,
            intra_op_threads=1,
            policy=PolicyConfig(budget_s=5.0),
            prior_bandwidth_bps=1e9,
        )
        rng = np.random.default_rng(0)
        inputs = [{"x": rng.standard_normal((1, SIZES[0])).astype(np.float32)} for _ in range(args.requests)]
        try:
            with Runtime(plan_dir, config, background_probes=False) as runtime:
                for item in inputs[:5]:
                    runtime.infer(item)  # warm the channel and the server
                sequential, streamed = [], []
                head_times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    results = [runtime.infer(item) for item in inputs]
                    sequential.append(args.requests / (time.perf_counter() - start))
                    head_times += [r.latency.head_s for r in results]
                    assert all(r.kind == "split" for r in results), {r.fallback_reason for r in results}
                    start = time.perf_counter()
                    results = list(runtime.infer_stream(inputs, workers=args.workers))
                    streamed.append(args.requests / (time.perf_counter() - start))
                    assert all(r.kind == "split" for r in results), {r.fallback_reason for r in results}
                    seq_out = [runtime.infer(item).outputs["y"] for item in inputs[:3]]
                    for a, b in zip(seq_out, results[:3], strict=True):
                        np.testing.assert_allclose(a, b.outputs["y"], rtol=1e-5, atol=1e-6)
        finally:
            proxy.stop()
            server.stop(grace=0)
    ratios = [s / q for s, q in zip(streamed, sequential, strict=True)]
    print(f"head time (median): {statistics.median(head_times) * 1000:.2f} ms")
    print(f"one at a time: {statistics.median(sequential):.1f} req/s (median of {args.repeats})")
    print(f"infer_stream, {args.workers} workers: {statistics.median(streamed):.1f} req/s")
    print(
        f"throughput gain: {statistics.median(ratios):.2f}x "
        f"(median of per-repeat ratios {[round(r, 2) for r in ratios]})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
