"""The device's bandwidth estimate against servers that do not report their compute time.

    python benchmarks/bench_interop.py [--rate-mbit 20] [--requests 30] [--servers splitinf,mlserver,kserve,pytriton]

A plan with one split option (full offload of a 131072-float input, 512 KiB on the wire, so the
proxy's 10 ms burst is a small part of a transfer) whose tail is compute-heavy (the input as 512 rows
of 256 through 24 layers of 256x256: ~800 M multiply-adds, tens of ms on one thread) is served by
``splitinf serve`` (reports its compute time in every answer), Seldon MLServer 1.7, KServe 0.21 and
Triton 2.51 through PyTriton 0.7 (report none; from ``python -m splitinf.tools.interop.setup_envs``).
The device reaches each through ``splitinf.tools.faults.FaultProxy`` capped at ``--rate-mbit`` each way, answers
``--requests`` requests one at a time, and prints its bandwidth estimate against the cap (the
median over ``--repeats`` runs, alternating the two settings below, with their range):

- "device": today's runtime, which takes the tail's compute time from the answer or, where the
  answer carries none, from the plan's profile (``splitinf.edge.correction``);
- "compute as transfer": the same requests with the plan's tail time set to 0, i.e. what the
  runtime did before: every millisecond the server computed counts as transfer time.

The tail time the plan declares is measured here with onnxruntime on one thread, as the planner's
server profile does.

A second table: the shipped digits pair planned by the planner (``write_digits_plan_dir``: no local
option), its tails on each server, ``--digits`` held-out digits answered one at a time on a
healthy loopback link; the split share after the first 5 requests and the accuracy, with
``tail_identity = "metadata"`` (the default) and ``"sha256"`` (what the device demanded before: every
answer of a stock server is then a mismatch). Figures from one run on one (possibly shared) machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from splitinf.cloud.app import create_server
from splitinf.cloud.config import ServerConfig
from splitinf.contract.files import write_json_atomic
from splitinf.contract.plan import load_plan
from splitinf.edge.config import DeviceConfig
from splitinf.edge.runtime import Runtime
from splitinf.ort import SessionSettings, open_session
from splitinf.tools.faults.proxy import DirectionFaults, FaultProxy, FaultSettings
from splitinf.tools.interop.servers import start_server
from splitinf.tools.testing.graphs import mlp
from splitinf.tools.testing.plans import DIGITS_CALIBRATION, write_digits_plan_dir, write_plan_dir

ROWS, WIDTH, LAYERS = 512, 256, 24
INPUT = ROWS * WIDTH


def compute_heavy_model() -> onnx.ModelProto:
    """x [1, ROWS*WIDTH] -> [ROWS, WIDTH] -> LAYERS x (MatMul WIDTHxWIDTH, Relu) -> MatMul WIDTHx1 -> y [1, ROWS]."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array((rng.standard_normal((WIDTH, WIDTH)) / 16).astype(np.float32), f"w{i}")
        for i in range(LAYERS)
    ]
    weights.append(numpy_helper.from_array(rng.standard_normal((WIDTH, 1)).astype(np.float32), "w_out"))
    shapes = [
        numpy_helper.from_array(np.array(s, np.int64), n) for n, s in (("rows", [ROWS, WIDTH]), ("one", [1, ROWS]))
    ]
    nodes = [helper.make_node("Reshape", ["x", "rows"], ["h0"])]
    for i in range(LAYERS):
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{LAYERS}", "w_out"], ["out"]))
    nodes.append(helper.make_node("Reshape", ["out", "one"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "heavy_tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, INPUT])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, ROWS])],
        initializer=weights + shapes,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def tail_seconds(model_path: Path, repeats: int = 30) -> float:
    session = open_session(model_path, SessionSettings().with_threads(1))  # as each server runs it
    x = np.random.default_rng(0).standard_normal((1, INPUT)).astype(np.float32)
    session.run(None, {"x": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_plans(root: Path) -> tuple[Path, Path, float]:
    """The plan with the measured tail time, and the same plan declaring a tail time of 0."""
    plan_dir = root / "plan"
    fallback = mlp(batch=1, seed=7, sizes=(INPUT, 4, ROWS))
    write_plan_dir(plan_dir, compute_heavy_model(), fallback, {"x": (0, 0)})
    plan = load_plan(plan_dir)
    option = plan.split_options[0]
    measured = tail_seconds(plan.path(f"server/{option.tail_model}/1/model.onnx"))
    with_time = dataclasses.replace(
        plan, options=tuple(dataclasses.replace(o, tail_seconds=measured) if o.is_remote else o for o in plan.options)
    )
    write_json_atomic(plan_dir / "plan.json", with_time.to_json())
    naive_dir = root / "naive"
    naive_dir.mkdir()
    for part in ("device", "server", "source"):
        (naive_dir / part).symlink_to(plan_dir / part)
    write_json_atomic(naive_dir / "plan.json", plan.to_json())  # tail_seconds 0 from write_plan_dir
    return plan_dir, naive_dir, measured


@contextmanager
def serving(kind: str, plan_dir: Path, work: Path) -> Iterator[str]:
    if kind == "splitinf":
        server, port = create_server(ServerConfig(repo=plan_dir / "server", port=0, metrics_port=None))
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.stop(grace=0)
        return
    process = start_server(kind, plan_dir, work)
    try:
        yield process.target
    finally:
        process.kill()


def estimate(plan_dir: Path, target: str, requests: int) -> tuple[float, int, float]:
    """(bandwidth estimate in bit/s after the requests, split answers, median round trip in s)."""
    config = DeviceConfig(server=target, budget_s=5.0, prior_bandwidth_bps=1e9)
    rng = np.random.default_rng(1)
    with Runtime(plan_dir, config, background_probes=False) as runtime:
        results = []
        for _ in range(requests):
            results.append(runtime.infer({"x": rng.standard_normal((1, INPUT)).astype(np.float32)}))
            runtime.probe_once()  # ServerReady between requests keeps the RTT baseline fresh, as the prober does
        snapshot = runtime.estimator.snapshot(runtime.clock())
    split = [r for r in results if r.kind == "split"]
    total = statistics.median(r.latency.total_s for r in split) if split else float("nan")
    return snapshot.bandwidth_bps, len(split), total


def digits_table(root: Path, kinds: list[str], count: int) -> None:
    from splitinf.tools.models import DIGITS_INPUT, load_digits_test

    plan_dir, calibration = write_digits_plan_dir(root / "digits"), DIGITS_CALIBRATION
    images, labels = load_digits_test()
    images, labels = images[calibration : calibration + count], labels[calibration : calibration + count]
    output = load_plan(plan_dir).outputs[0].name
    print()
    print(f"digits ({len(images)} held-out, after {calibration} calibration digits), healthy loopback link:")
    print()
    print("| server | tail_identity | split after start-up | accuracy | options used |")
    print("|---|---|---|---|---|")
    for kind in kinds:
        with serving(kind, plan_dir, root / f"digits-{kind}") as target:
            for mode in ("metadata", "sha256"):
                config = DeviceConfig(server=target, budget_s=1.0, tail_identity=mode)  # type: ignore[arg-type]
                with Runtime(plan_dir, config) as runtime:
                    results = [runtime.infer({DIGITS_INPUT: image[None]}) for image in images]
                after = results[5:]
                split = sum(r.kind == "split" for r in after)
                correct = sum(int(np.argmax(r.outputs[output])) == int(y) for r, y in zip(results, labels, strict=True))
                used = sorted({r.option_id for r in results})
                print(
                    f"| {kind} | {mode} | {split}/{len(after)} ({split / len(after):.0%}) | "
                    f"{correct / len(results):.1%} | {', '.join(used)} |"
                )


def shown(values: list[float]) -> str:
    return f"{statistics.median(values) / 1e6:.1f} Mbit/s ({min(values) / 1e6:.1f}-{max(values) / 1e6:.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate-mbit", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--servers", default="splitinf,mlserver,kserve,pytriton")
    parser.add_argument("--digits", type=int, default=200, help="held-out digits per server (0: no digits table)")
    args = parser.parse_args()
    cap = args.rate_mbit * 1e6
    print("command: python benchmarks/bench_interop.py " + " ".join(sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plan_dir, naive_dir, measured = write_plans(root)
        print(
            f"model: {LAYERS} MatMul {WIDTH}x{WIDTH} layers over {ROWS} rows, full offload ({INPUT * 4 // 1024} KiB "
            f"request); tail {measured * 1000:.1f} ms "
            f"on 1 ORT thread; FaultProxy cap {args.rate_mbit:g} Mbit/s each way; {args.requests} requests"
        )
        print(f"load average at start: {' '.join(f'{v:.1f}' for v in os.getloadavg())} ({os.cpu_count()} cores)")
        print()
        print(
            "| server | reports compute | estimate (device) | vs cap | compute counted as transfer | vs cap | split |"
        )
        print("|---|---|---|---|---|---|---|")
        for kind in args.servers.split(","):
            device: list[float] = []
            naive: list[float] = []
            split = 0
            with serving(kind, plan_dir, root / f"work-{kind}") as target:
                faults = DirectionFaults(rate_kbit=cap / 1000)
                with FaultProxy(target) as proxy:
                    proxy.set(FaultSettings(upstream=faults, downstream=faults))
                    for _ in range(args.repeats):
                        bandwidth, answered, _ = estimate(plan_dir, proxy.address, args.requests)
                        device.append(bandwidth)
                        split += answered
                        naive.append(estimate(naive_dir, proxy.address, args.requests)[0])
            error, naive_error = statistics.median(device) / cap - 1, statistics.median(naive) / cap - 1
            print(
                f"| {kind} | {'yes' if kind == 'splitinf' else 'no'} | {shown(device)} | {error:+.0%} | "
                f"{shown(naive)} | {naive_error:+.0%} | {split}/{args.requests * args.repeats} |"
            )
        if args.digits:
            digits_table(root, args.servers.split(","), args.digits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
