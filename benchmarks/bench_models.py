"""Benchmark the shipped models on this machine: the ResNet-50-like model and the digits pair.

    python benchmarks/bench_models.py [--repeats N] [--threads T]

Prints the ResNet-50-like model's build time, size, parameter count and single-image (batch 1)
onnxruntime latency, then the digits main and fallback models' batch-1 latency over the held-out
set and their ratio, all from one run. Figures are medians; the machine may be shared, so compare
the ratios, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

from splitinf.contract.stats import quantile
from splitinf.ort import SessionSettings, open_session
from splitinf.tools.models import (
    DIGITS_INPUT,
    DIGITS_OUTPUT,
    digits_fallback_path,
    digits_info,
    digits_main_path,
    load_digits_test,
)
from splitinf.tools.models.resnet import build_resnet50


def make_session(model: bytes | str, threads: int) -> ort.InferenceSession:
    return open_session(model, SessionSettings().with_threads(threads))


def timed_runs(session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]], output: str) -> list[float]:
    times = []
    for feed in feeds:
        start = time.perf_counter()
        session.run([output], feed)
        times.append(time.perf_counter() - start)
    return times


def bench_resnet(repeats: int, threads: int) -> None:
    start = time.perf_counter()
    model = build_resnet50()
    build_s = time.perf_counter() - start
    data = model.SerializeToString()
    params = sum(int(np.prod(init.dims, dtype=np.int64)) for init in model.graph.initializer)
    start = time.perf_counter()
    session = make_session(data, threads)
    session_s = time.perf_counter() - start
    image = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    timed_runs(session, [{"image": image}] * 3, "logits")  # warm-up
    times = timed_runs(session, [{"image": image}] * repeats, "logits")
    print(
        f"resnet50-like: {params:,} parameters, {len(model.graph.node)} nodes, {len(data) / 1e6:.1f} MB; "
        f"build {build_s:.2f} s, session {session_s:.2f} s"
    )
    print(
        f"  batch-1 inference over {repeats} runs: median {statistics.median(times) * 1e3:.1f} ms, "
        f"p90 {quantile(times, 0.9) * 1e3:.1f} ms, min {min(times) * 1e3:.1f} ms"
    )


def bench_digits(threads: int) -> None:
    images, labels = load_digits_test()
    info = digits_info()
    feeds = [{DIGITS_INPUT: images[i : i + 1]} for i in range(len(images))]
    medians = {}
    for role, path in (("main", digits_main_path()), ("fallback", digits_fallback_path())):
        session = make_session(str(path), threads)
        timed_runs(session, feeds[:20], DIGITS_OUTPUT)  # warm-up
        times = timed_runs(session, feeds, DIGITS_OUTPUT)
        medians[role] = statistics.median(times)
        record = info["models"][role]
        print(
            f"digits {role}: accuracy {record['accuracy']:.4f}, {record['parameters']:,} parameters, "
            f"{record['bytes']:,} bytes; batch-1 over {len(feeds)} images: median {medians[role] * 1e6:.1f} us, "
            f"p99 {quantile(times, 0.99) * 1e6:.1f} us"
        )
    print(f"  main / fallback median latency ratio: {medians['main'] / medians['fallback']:.1f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the shipped and benchmark models")
    parser.add_argument("--repeats", type=int, default=20, help="ResNet-50 timed runs (default 20)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = its default)")
    args = parser.parse_args(argv)
    print(f"command: python benchmarks/bench_models.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"onnxruntime {ort.__version__}, {os.cpu_count()} CPUs visible, intra-op threads {args.threads or 'default'}")
    bench_resnet(args.repeats, args.threads)
    bench_digits(args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
