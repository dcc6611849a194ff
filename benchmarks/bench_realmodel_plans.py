"""Benchmark: plans of real third-party models at the user's shapes, predicted vs measured latency.

Run:  python benchmarks/bench_realmodel_plans.py [--cache DIR] [--bandwidth 50] [--rtt 20] [--requests 11]

For each model it runs the commands a user would (``splitinf profile`` on the device side at 1
thread and on the server side at ``--server-threads``, then ``splitinf plan --hold-all``), with the
user's inputs given as a user gives them:

- silero-vad: ``--samples`` (512 audio samples at 16 kHz, the recurrent state, sr); random
  inputs crash it;
- PP-OCRv4 detection: ``--shape x=1x3x320x448`` for both profiles and the plan;
- the BERT-style encoder (hidden 256, 4 layers): ``--shape`` at 128 tokens for the profiles,
  ``--samples`` of 128 tokens for the plan.

The cuts are the input and up to three more (``splitinf.tools.bench.choose_cuts`` at those shapes),
codecs fp32 and fp16. The model itself stands in as the fallback (the runtime needs one). Then a
real tail server serves the plan's repository behind a ``FaultProxy`` (``--bandwidth`` cap and
``--rtt``/2 delay each way), and a real ``Runtime`` per option (a plan holding only that option)
answers ``--requests`` requests on the first sample, the options taking turns in a shuffled order.
It prints, per option, the plan's predicted latency (``expected_latency`` at the link's bandwidth
and RTT) against the measured median, and the same for the option each plan predicts fastest.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from bench_plan_accuracy import forced_plan, measure_interleaved  # run from benchmarks/: its neighbour

from splitinf.cli import main as cli_main
from splitinf.cloud.app import create_server
from splitinf.cloud.config import ServerConfig
from splitinf.contract.plan import expected_latency, load_plan
from splitinf.edge.config import DeviceConfig
from splitinf.edge.runtime import Runtime
from splitinf.offline.graph import GraphView, load_model
from splitinf.tools.bench import choose_cuts
from splitinf.tools.faults import FaultProxy
from splitinf.tools.testing import realmodels


def _models(cache: Path, work: Path, wanted: list[str]) -> list[dict[str, Any]]:
    """Each model with its samples file and the input flags of its profiles and of its plan."""
    detector_shape = ["--shape", "x=1x3x320x448"]
    bert_shape = ["--shape", "input_ids=1x128", "--shape", "attention_mask=1x128"]
    specs = [  # name, samples' sizes, profile flags, plan flags (None: --samples)
        ("silero_vad", {"count": 8}, None, None),
        ("ocr_detector", {"count": 2}, detector_shape, detector_shape),
        ("bert_like", {"count": 8, "vocab": 8000}, bert_shape, None),
    ]
    models = []
    for name, size, profile_flags, plan_flags in [s for s in specs if s[0] in wanted]:
        if name == "bert_like":
            path = work / "bert_like.onnx"
            onnx.save(realmodels.bert_like(vocab=8000, hidden=256, heads=4, layers=4, ffn=1024), path)
        else:
            path = realmodels.wheel_model(name, cache)
        samples = work / f"{name}-samples.npz"
        arrays: dict[str, Any] = realmodels.samples(name, **size)
        np.savez(samples, **arrays)
        samples_flags = ["--samples", str(samples)]
        models.append(
            {
                "name": name,
                "path": path,
                "samples": samples,
                "profile_flags": profile_flags or samples_flags,
                "plan_flags": plan_flags or samples_flags,
            }
        )
    return models


def _first_sample(samples: Path) -> dict[str, np.ndarray]:
    with np.load(samples) as data:
        return {name: np.array(data[name][0]) for name in data.files if name != "labels"}


def _run(argv: list[str]) -> None:
    print(f"$ splitinf {shlex.join(argv)}", flush=True)
    if cli_main(argv) != 0:
        raise SystemExit(f"splitinf {argv[0]} failed")


def _plan(model: dict[str, Any], work: Path, args: argparse.Namespace) -> tuple[Path, list[str]]:
    """Profile both sides and plan; returns the plan directory and the cuts profiled."""
    feeds = _first_sample(model["samples"])
    cut_ids = choose_cuts(GraphView(load_model(model["path"]), feeds).cuts(), args.max_cuts)
    out = work / model["name"]
    out.mkdir()
    common = ["--cuts", ",".join(cut_ids), "--codecs", "fp32,fp16", "--repeats", str(args.repeats), "--passes", "2"]
    for role, threads in (("device", 1), ("server", args.server_threads)):
        target = str(out / f"{role}.json")
        _run(["profile", str(model["path"]), "-o", target, "--threads", str(threads), *common, *model["profile_flags"]])
    _run(
        [
            "plan", str(model["path"]), "--device", str(out / "device.json"), "--server", str(out / "server.json"),
            "--fallback", str(model["path"]), "--codecs", "fp32,fp16", "--no-local", "--hold-all",
            "--bandwidths", f"{args.bandwidth:g}", "--rtts", f"{args.rtt:g}", "-o", str(out / "plan"),
            *model["plan_flags"],
        ]
    )  # fmt: skip
    return out / "plan", cut_ids


def _measure(model: dict[str, Any], plan_dir: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median seconds per split option (total, head, network, server) through the shaped link."""
    plan = load_plan(plan_dir, check_files=("device", "server"))
    feeds = _first_sample(model["samples"])
    # warmup off: the server warms a tail up on zeros with dynamic dimensions 1, which silero-vad's
    # tails reject (Pad reflect needs >= 2 samples); the first rounds of requests warm up instead
    server_config = ServerConfig(
        repo=plan_dir / "server", port=0, metrics_port=None, intra_op_threads=args.server_threads, warmup=False
    )
    server, port = create_server(server_config)
    runtimes: dict[str, Runtime] = {}
    try:
        with FaultProxy(f"127.0.0.1:{port}") as proxy:
            proxy.set(latency_ms=args.rtt / 2, rate_kbit=args.bandwidth * 1e3)
            for n, option in enumerate(plan.split_options):
                forced = forced_plan(plan_dir, option.id, plan_dir.parent / f"forced-{n}")
                config = DeviceConfig(server=proxy.address, budget_s=120.0, intra_op_threads=1)
                runtimes[option.id] = Runtime(forced, config, background_probes=False)
            stats = measure_interleaved(runtimes, feeds, args.requests, seed=0)
    finally:
        for runtime in runtimes.values():
            runtime.close()
        server.stop()
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "splitinf-realmodels")
    parser.add_argument("--bandwidth", type=float, default=50.0, help="emulated link in Mbit/s")
    parser.add_argument("--rtt", type=float, default=20.0, help="emulated round-trip time in ms")
    parser.add_argument("--requests", type=int, default=11, help="timed requests per option")
    parser.add_argument("--repeats", type=int, default=10, help="profile repeats per pass")
    parser.add_argument("--max-cuts", type=int, default=4, help="cuts profiled, the input among them")
    parser.add_argument("--server-threads", type=int, default=1)
    parser.add_argument("--models", default="silero_vad,ocr_detector,bert_like")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.keep:
            work = Path(tempfile.mkdtemp(prefix="bench_realmodel_plans_"))
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_realmodel_plans_")))
        print(f"# {shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")
        print(f"# link {args.bandwidth:g} Mbit/s, RTT {args.rtt:g} ms (FaultProxy); device 1 thread, "
              f"server {args.server_threads}; work dir {work}{' (kept)' if args.keep else ''}")  # fmt: skip
        summary = [_report(model, work, args) for model in _models(args.cache, work, args.models.split(","))]
    print("\n## the option each plan predicts fastest at this link: predicted vs measured")
    for name, option_id, predicted, measured in summary:
        print(f"   {name:14s} {option_id:50s} predicted {predicted * 1e3:8.1f} ms  measured "
              f"{measured * 1e3:8.1f} ms  error {(predicted - measured) / measured * 100:+6.1f}%")  # fmt: skip
    return 0


def _report(model: dict[str, Any], work: Path, args: argparse.Namespace) -> tuple[str, str, float, float]:
    """Plan and measure one model, print its rows; (name, option, predicted s, measured s) of the predicted fastest."""
    started = time.perf_counter()
    plan_dir, cut_ids = _plan(model, work, args)
    planned_s = time.perf_counter() - started
    stats = _measure(model, plan_dir, args)
    plan = load_plan(plan_dir)
    bandwidth, rtt = args.bandwidth * 1e6, args.rtt * 1e-3
    rows = [(o.id, expected_latency(o, bandwidth, rtt), stats[o.id]["median"]) for o in plan.split_options]
    at = ", ".join(f"{n}={'x'.join(map(str, e['shape'])) or '()'}" for n, e in plan.inputs_at["inputs"].items())
    print(f"\n## {model['name']} at {at} ({plan.inputs_at['source']}); cuts {', '.join(cut_ids)}; "
          f"profile+plan {planned_s:.0f} s")  # fmt: skip
    for note in [*plan.profiles["evaluated"]["shape_warnings"], *plan.profiles["evaluated"]["notes"]]:
        print(f"   note: {note}")
    for option, (option_id, predicted, measured) in zip(plan.split_options, rows, strict=True):
        print(f"   {option_id:58s} predicted {predicted * 1e3:8.1f} ms  measured {measured * 1e3:8.1f} ms  "
              f"error {(predicted - measured) / measured * 100:+6.1f}%")  # fmt: skip
        network = (option.wire_bytes + option.response_bytes) * 8 / bandwidth + rtt + option.serialize_seconds
        print(f"     predicted/measured ms: head {option.head_seconds * 1e3:.1f}/{stats[option_id]['head'] * 1e3:.1f}"
              f", network {network * 1e3:.1f}/{stats[option_id]['network'] * 1e3:.1f}, tail "
              f"{option.tail_seconds * 1e3:.1f}/{stats[option_id]['server'] * 1e3:.1f}")  # fmt: skip
    errors = [abs(p - m) / m for _, p, m in rows]
    print(f"   |error| median {statistics.median(errors) * 100:.1f}%, max {max(errors) * 100:.1f}%", flush=True)
    fastest = min(rows, key=lambda row: row[1])  # the option the plan predicts fastest here
    return (model["name"], *fastest)


if __name__ == "__main__":
    sys.exit(main())
