"""Benchmark: cuts, split --verify and profile on real third-party graphs at the user's shapes.

Run:  python benchmarks/bench_realmodels.py [--cache DIR] [--threads 1] [--repeats 10]

The models (:mod:`splitinf.tools.testing.realmodels`): silero-vad (512 samples at 16 kHz, the
recurrent state, sr=16000), PP-OCRv4 detection (a 320x448 image), PP-OCRv4 recognition (a 48x320
text line) and a BERT-style encoder (hidden 256, 4 layers, sequence 128). For each it prints, from one run:

- cuts: how many, the input cut's bytes and the total FLOPs at the real shapes, against the same
  figures at dynamic dimensions 1 (what `splitinf cuts` gave before `--shape`), and why any
  region has no cut;
- split --verify on the samples at the middle cut (and the error without samples, if any);
- profile of three cuts (input, middle, output) with fp32, fp16 and int8: the full model's
  median time at the real shapes against dimensions 1, the codecs timed per cut, the notes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from splitinf.errors import InputError
from splitinf.offline.graph import GraphView, load_model
from splitinf.offline.inputs import model_inputs
from splitinf.offline.partition import export_partition
from splitinf.offline.profiling import profile_model
from splitinf.tools.testing import realmodels


def _model_files(cache: Path, work: Path) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    bert = work / "bert_like.onnx"
    onnx.save(realmodels.bert_like(vocab=8000, hidden=256, heads=4, layers=4, ffn=1024), bert)
    return {
        "silero_vad": (realmodels.wheel_model("silero_vad", cache), realmodels.samples("silero_vad")),
        "ocr_detector": (realmodels.wheel_model("ocr_detector", cache), realmodels.samples("ocr_detector", count=2)),
        "ocr_recognizer": (
            realmodels.wheel_model("ocr_recognizer", cache),
            realmodels.samples("ocr_recognizer", count=2),
        ),
        "bert_like": (bert, realmodels.samples("bert_like", vocab=8000)),
    }


def _cuts_figures(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    start = time.perf_counter()
    at_shape = GraphView(model, samples[0])
    cuts = at_shape.cuts()
    seconds = time.perf_counter() - start
    at_one = GraphView(model)
    ones = at_one.cuts()
    return {
        "cuts": len(cuts),
        "cuts_at_1": len(ones),
        "input_bytes": cuts[0].bytes_per_sample,
        "input_bytes_at_1": ones[0].bytes_per_sample,
        "flops": at_shape.total_flops,
        "flops_at_1": at_one.total_flops,
        "uncuttable": at_shape.uncuttable(),
        "seconds": seconds,
        "ids": [c.id for c in cuts],
    }


def _verify_figures(path: Path, middle: str, samples: list[dict[str, np.ndarray]], work: Path) -> dict[str, Any]:
    start = time.perf_counter()
    manifest = export_partition(path, middle, work / "split", verify=True, samples=samples)
    seconds = time.perf_counter() - start
    try:
        export_partition(path, middle, work / "split-random", verify=True)
        random = "verified"
    except InputError as exc:
        random = f"refused in one line: {str(exc)[:90]}..."
    return {"seconds": seconds, "report": manifest["verify"], "random": random}


def _profile_figures(
    model: onnx.ModelProto, name: str, ids: list[str], samples: list[dict[str, np.ndarray]], args: argparse.Namespace
) -> dict[str, Any]:
    inputs = model_inputs(GraphView(model).input_specs(), samples=samples)
    chosen = list(dict.fromkeys([ids[0], ids[len(ids) // 2], ids[-1]]))
    start = time.perf_counter()
    profile = profile_model(
        model, name=name, sha256="-", threads=args.threads, cut_ids=chosen, codecs=("fp32", "fp16", "int8"),
        repeats=args.repeats, warmup=2, passes=1, inputs=inputs,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    try:
        at_one = profile_model(
            model, name=name, sha256="-", threads=args.threads, cut_ids=chosen[:1], codecs=("fp32",),
            repeats=args.repeats, warmup=2, passes=1,
        )  # fmt: skip
        full_at_1: float | str = at_one["model_seconds"]["median"]
    except InputError:
        full_at_1 = "refused (random inputs)"
    return {
        "seconds": seconds,
        "full": profile["model_seconds"]["median"],
        "full_at_1": full_at_1,
        "codecs": {c["id"]: list(c["codecs"]) for c in profile["cuts"]},
        "notes": profile["notes"],
        "inputs": inputs.shapes(),
    }


def _ms(value: float | str) -> str:
    return f"{value * 1e3:.2f} ms" if isinstance(value, float) else value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "splitinf-realmodels"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print("command: python benchmarks/bench_realmodels.py " + shlex.join(sys.argv[1:]))
    with tempfile.TemporaryDirectory(prefix="bench-realmodels-") as tmp:
        work = Path(tmp)
        for name, (path, stacked) in _model_files(Path(args.cache), work).items():
            model = load_model(path)
            npz = work / f"{name}.npz"
            np.savez(npz, **stacked)
            sets = list(model_inputs(GraphView(model).input_specs(), samples=npz).samples)
            cuts = _cuts_figures(model, sets)
            verify = _verify_figures(path, cuts["ids"][len(cuts["ids"]) // 2], sets, work / name)
            profile = _profile_figures(model, name, cuts["ids"], sets, args)
            shapes = ", ".join(f"{k}={'x'.join(map(str, v)) or '()'}" for k, v in profile["inputs"].items())
            print(f"\n## {name} at {shapes}")
            print(f"- cuts: {cuts['cuts']} in {cuts['seconds']:.2f} s (at dims 1: {cuts['cuts_at_1']})")
            print(f"- input cut bytes: {cuts['input_bytes']:,} (at dims 1: {cuts['input_bytes_at_1']:,})")
            print(f"- total FLOPs: {cuts['flops']:,} (at dims 1: {cuts['flops_at_1']:,})")
            for reason in cuts["uncuttable"]:
                print(f"- no cut: {reason}")
            report = verify["report"]
            print(
                f"- split --verify on {report['samples']} samples: max rel error {report['max_rel_error']:.2g} "
                f"in {verify['seconds']:.2f} s; on random inputs: {verify['random']}"
            )
            print(
                f"- profile of {len(profile['codecs'])} cuts in {profile['seconds']:.1f} s: full model "
                f"{_ms(profile['full'])} (at dims 1: {_ms(profile['full_at_1'])})"
            )
            for cut_id, codecs in profile["codecs"].items():
                print(f"  - {cut_id[:60]}: {', '.join(codecs)}")
            for note in profile["notes"]:
                print(f"  - note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
