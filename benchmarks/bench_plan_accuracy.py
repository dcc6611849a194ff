"""How right is the cost model? Predicted vs measured end-to-end latency, and planned vs best option.

Builds the ResNet-50-like model, profiles it on this machine (device side: 1 thread; server
side: ``--server-threads``), runs ``splitinf plan``, starts a real tail server on the plan's
repository, and puts an emulated link in front of it (``FaultProxy``: bandwidth cap and
one-way delay in both directions). For each bandwidth it answers requests through the real
device runtime (``splitinf.edge.runtime.Runtime``), one runtime per option forced (a copy of the plan
holding only that option and the fallback), the options taking turns request by request in a
shuffled order so other load on the machine falls on all of them alike, and reports:

- predicted (``expected_latency`` at the link's bandwidth and RTT) vs measured median latency;
- the option the device's rule picks (``Plan.planned``, within ``--budget-ms``) vs the best option found by
  measuring every candidate
  (the held ones, or with ``--all-options`` every cut and codec evaluated; held ones are starred).

Run::

    python benchmarks/bench_plan_accuracy.py [--bandwidths 10,50,200] [--rtt 20] [--requests 11] [--all-options]

Device and server share this machine's CPU, so the device is no slower than the server; the
full model on the device is left out of the plan by default (``--local`` to include it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from splitinf.cli import main as cli_main
from splitinf.cloud.app import create_server
from splitinf.cloud.config import ServerConfig
from splitinf.contract.files import sha256_file, write_json_atomic
from splitinf.contract.plan import expected_latency, load_plan
from splitinf.edge.config import DeviceConfig
from splitinf.edge.runtime import Runtime
from splitinf.offline.graph import enumerate_cuts
from splitinf.offline.profiling import profile_model
from splitinf.tools.faults import FaultProxy
from splitinf.tools.models.resnet import build_resnet50

BENCH_CUTS = ("image", "stem.maxpool", "layer2.0.relu3", "layer3.0.relu3", "layer4.0.relu3", "flatten")


def fallback_model(model: onnx.ModelProto, classes: int) -> onnx.ModelProto:
    """A tiny model with the same input and output: GlobalAveragePool -> Flatten -> Gemm."""
    x, y = model.graph.input[0], model.graph.output[0]
    channels = x.type.tensor_type.shape.dim[1].dim_value
    w = onnx.numpy_helper.from_array(
        np.random.default_rng(1).standard_normal((classes, channels)).astype(np.float32), "w"
    )
    nodes = [
        helper.make_node("GlobalAveragePool", [x.name], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], [y.name], transB=1),
    ]
    graph = helper.make_graph(nodes, "fallback", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=model.ir_version)


def forced_plan(plan_dir: Path, option_id: str, out: Path) -> Path:
    """A copy of the plan that holds only ``option_id`` (and the fallback), so the runtime must use it."""
    data = json.loads((plan_dir / "plan.json").read_text())
    data["options"] = [o for o in data["options"] if o["id"] in (option_id, "fallback")]
    for option in data["options"]:
        if option["kind"] == "fallback":
            # The policy answers from the most accurate option; random weights make every model
            # agree, so mark the fallback as the worse one: it is here only because the runtime needs one.
            option["accuracy"] = 0.0
        elif option.get("accuracy") is None:  # outputs with no top-1 to agree on: the forced option must still win
            option["accuracy"] = 1.0
    out.mkdir(parents=True)
    for part in ("device", "server"):  # hard links: the device refuses symlinks leaving its plan directory
        shutil.copytree(plan_dir / part, out / part, copy_function=os.link)
    write_json_atomic(out / "plan.json", data)
    return out


def measure_interleaved(
    runtimes: dict[str, Runtime], inputs: dict[str, np.ndarray], requests: int, seed: int
) -> dict[str, dict[str, float]]:
    """Median latency per option (and of its stages: head, network, server), the options taking turns in
    a shuffled order each round, so bursts of other load on the machine fall on every option alike (the
    first two rounds only warm up)."""
    order = list(runtimes)
    rng = random.Random(seed)
    stages = ("total_s", "head_s", "network_s", "server_s")
    seconds: dict[str, dict[str, list[float]]] = {k: {stage: [] for stage in stages} for k in order}
    other = dict.fromkeys(order, 0)
    for k in range(requests + 2):
        rng.shuffle(order)
        for option_id in order:
            result = runtimes[option_id].infer(inputs, budget_s=120.0)
            if result.option_id != option_id:
                other[option_id] += 1
            elif k >= 2:
                for stage in stages:
                    seconds[option_id][stage].append(getattr(result.latency, stage))

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    return {
        k: {
            "median": median(v["total_s"]),
            **{stage.removesuffix("_s"): median(v[stage]) for stage in stages[1:]},
            "n": len(v["total_s"]),
            "other": other[k],
        }
        for k, v in seconds.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=1.0, help="ResNet-50 channel width (1.0: the real size)")
    parser.add_argument("--bandwidths", default="10,50,200", help="Mbit/s, comma-separated")
    parser.add_argument("--rtt", type=float, default=20.0, help="emulated round-trip time in ms")
    parser.add_argument("--budget-ms", type=float, default=250.0, help="the plan's latency budget (the device's)")
    parser.add_argument("--requests", type=int, default=11, help="timed requests per option and bandwidth")
    parser.add_argument("--repeats", type=int, default=7, help="profile repeats per pass")
    parser.add_argument("--passes", type=int, default=3, help="profile passes (each item keeps its quietest)")
    parser.add_argument("--server-threads", type=int, default=2)
    parser.add_argument("--codecs", default="fp32,fp16,int8")
    parser.add_argument("--local", action="store_true", help="also hold the full model on the device")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--all-options", action="store_true", help="measure every evaluated option, not only the held ones"
    )
    args = parser.parse_args()
    bandwidths = [float(b) * 1e6 for b in args.bandwidths.split(",")]
    rtt = args.rtt * 1e-3
    work = Path(tempfile.mkdtemp(prefix="bench_plan_accuracy_"))
    print(f"# {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")
    print(f"# work dir {work}; cpu count {os.cpu_count()}")
    try:
        model = build_resnet50(width=args.width, num_classes=10)
        model_path = work / "resnet.onnx"
        onnx.save_model(model, model_path)
        small = fallback_model(model, 10)
        small_path = work / "fallback.onnx"
        onnx.save_model(small, small_path)
        cuts = [c.id for c in enumerate_cuts(model) if c.id in BENCH_CUTS]
        sha = sha256_file(model_path)
        started = time.perf_counter()
        for role, threads in (("device", 1), ("server", args.server_threads)):
            profile = profile_model(
                model,
                name="resnet",
                sha256=sha,
                threads=threads,
                cut_ids=cuts,
                codecs=args.codecs,
                repeats=args.repeats,
                warmup=2,
                passes=args.passes,
                fallback=(small, "fallback", sha256_file(small_path)) if role == "device" else None,
            )
            write_json_atomic(work / f"{role}.json", profile)
        print(f"# profiled {len(cuts)} cuts x {args.codecs} on both sides in {time.perf_counter() - started:.0f} s")
        rng = np.random.default_rng(0)
        np.savez(work / "samples.npz", image=rng.random((8, 3, 224, 224), dtype=np.float32))
        plan_dir = work / "plan"
        argv = [
            "plan", str(model_path), "--device", str(work / "device.json"), "--server", str(work / "server.json"),
            "--fallback", str(small_path), "--calibration", str(work / "samples.npz"), "--codecs", args.codecs,
            "--bandwidths", args.bandwidths, "--rtts", f"{args.rtt:g}", "--reference-rtt", f"{args.rtt:g}",
            "--budget-ms", f"{args.budget_ms:g}",
        ]  # fmt: skip
        if not args.local:
            argv.append("--no-local")
        if cli_main([*argv, "-o", str(plan_dir)]) != 0:
            return 1
        plan = load_plan(plan_dir, check_files=("device", "server"))
        # every evaluated option, so that "best" is the best of all cuts and codecs, not only the held ones
        every_dir = work / "every"
        if cli_main([*argv, "-o", str(every_dir), "--hold-all"]) != 0:
            return 1
        every = load_plan(every_dir, check_files=("device", "server"))
        candidates = [o for o in every.options if o.kind in ("split", "local")]
        if not args.all_options:
            candidates = [o for o in candidates if o.id in {h.id for h in plan.options}]
        server, port = create_server(
            ServerConfig(repo=every_dir / "server", port=0, metrics_port=None, intra_op_threads=args.server_threads)
        )
        x = rng.random((1, 3, 224, 224), dtype=np.float32)
        rows = []
        try:
            with FaultProxy(f"127.0.0.1:{port}") as proxy:
                runtimes = {}
                for n, option in enumerate(candidates):
                    forced = forced_plan(every_dir, option.id, work / f"forced-{n}")
                    config = DeviceConfig(server=proxy.address, budget_s=120.0, intra_op_threads=1)
                    runtimes[option.id] = Runtime(forced, config, background_probes=False)
                try:
                    for bw in bandwidths:
                        proxy.set(latency_ms=args.rtt / 2, rate_kbit=bw / 1e3)
                        load_before = os.getloadavg()[0]
                        stats_by_option = measure_interleaved(runtimes, {"image": x}, args.requests, seed=int(bw))
                        measured = {}
                        for option in candidates:
                            stats = stats_by_option[option.id]
                            predicted = expected_latency(option, bw, rtt)
                            measured[option.id] = stats["median"]
                            rows.append((bw, option.id, predicted, stats))
                            held_mark = "*" if option.id in {h.id for h in plan.options} else " "
                            error = (predicted - stats["median"]) / stats["median"]
                            print(
                                f"{bw / 1e6:7g} Mbit/s {held_mark}{option.id:38s} predicted {predicted * 1e3:8.1f} ms  "
                                f"measured {stats['median'] * 1e3:8.1f} ms (n={stats['n']}, other={stats['other']})  "
                                f"error {error * 100:+6.1f}%",
                                flush=True,
                            )
                        choice = plan.planned(bw, rtt)
                        planned = choice[0].id if choice else "none"
                        best = min(measured, key=lambda k: measured[k])
                        planned_s = measured.get(planned, float("nan"))  # the fallback is not measured
                        print(
                            f"{bw / 1e6:7g} Mbit/s  planned {planned} ({planned_s * 1e3:.1f} ms), "
                            f"best measured {best} ({measured[best] * 1e3:.1f} ms): "
                            f"planned/best = {planned_s / measured[best]:.3f}  "
                            f"[load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}]",
                            flush=True,
                        )
                finally:
                    for runtime in runtimes.values():
                        runtime.close()
        finally:
            server.stop()
        errors = [abs(p - s["median"]) / s["median"] for _, _, p, s in rows]
        print(f"# |prediction error|: median {statistics.median(errors) * 100:.1f}%, max {max(errors) * 100:.1f}%")
    finally:
        if args.keep:
            print(f"# kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
