"""Benchmark: enumerate the cuts of a DenseNet-sized graph and export one cut.

Run:  python benchmarks/bench_partition.py [--blocks 4] [--layers 36] [--repeats 5]

Prints the graph size and the median wall time of: enumerate_cuts (shape inference
included), split_model of the middle cut, and export_partition of that cut from a file
(load + checker + analysis + split + checker on both parts + atomic write). Goal: under 2 s each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnx

from splitinf.offline.graph import enumerate_cuts
from splitinf.offline.partition import export_partition, split_model
from splitinf.tools.testing.graphs import densenet_like


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--layers", type=int, default=36, help="layers per dense block")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model = densenet_like(blocks=args.blocks, layers_per_block=args.layers)
    cuts = enumerate_cuts(model)
    middle = cuts[len(cuts) // 2]
    print(
        f"command: python benchmarks/bench_partition.py --blocks {args.blocks} --layers {args.layers} "
        f"--repeats {args.repeats}"
    )
    print(
        f"graph: {len(model.graph.node)} nodes, {len(model.graph.initializer)} initializers, "
        f"{model.ByteSize() / 1e6:.1f} MB; {len(cuts)} cuts; exported cut {middle.id} "
        f"({len(middle.tensors)} tensors, {middle.bytes_per_sample} bytes/sample)"
    )
    enumerate_s = _median_seconds(lambda: enumerate_cuts(model), args.repeats)
    split_s = _median_seconds(lambda: split_model(model, middle), args.repeats)
    with tempfile.TemporaryDirectory(prefix="bench-partition-") as tmp:
        source = Path(tmp) / "densenet.onnx"
        onnx.save_model(model, str(source))
        export_s = _median_seconds(lambda: export_partition(source, middle.id, Path(tmp) / "out"), args.repeats)
    print(
        f"median of {args.repeats}: enumerate_cuts {enumerate_s:.3f} s, split_model {split_s:.3f} s, "
        f"export_partition {export_s:.3f} s (goal: < 2 s each)"
    )
    return 0 if max(enumerate_s, export_s) < 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
