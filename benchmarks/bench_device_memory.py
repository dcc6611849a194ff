"""Weights once on the device, and planning that fits: the ResNet-50-like model, measured.

    python benchmarks/bench_device_memory.py [--cuts 6] [--repeats 3] [--work DIR] [--hold-all]

Builds the ResNet-50-like model (splitinf.tools.models.resnet.build_resnet50, random weights) and its
width-0.25 fallback, profiles ``--cuts`` cuts (the input cut and others spread along the model; one
profile serves as device and server profile: this is about sizes and memory, not about which cut
wins), then runs ``splitinf plan`` under ``/usr/bin/time -v`` and prints:

- the plan's peak RSS and wall time (issue 13's target: under 1 GB);
- the device part's size (the plan's ``device/`` folder) against ``model.onnx`` + ``fallback.onnx``
  (target: at most 1.15x), beside what the same options would weigh as one head file each;
- the resident memory (VmRSS after loading and one run of every option) of the device runtime with
  the plan loaded against onnxruntime running the full model alone, each in its own subprocess,
  median of ``--repeats`` (target: at most 1.2x);
- what holding each weight once costs in time: each held fp32 head run as its chain of segments
  against the same head as one file (split_model's), paired runs in this process.

Every command run is printed first; the machine may be shared, so compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from splitinf.offline.graph import enumerate_cuts
from splitinf.tools.models.resnet import build_resnet50

# One child process per measurement: the interpreter, onnxruntime and the model, nothing else of ours.
FULL_MODEL_RSS = """
import sys, numpy as np
from splitinf.ort import SessionSettings, open_session
session = open_session(sys.argv[1], SessionSettings().with_threads(1))
session.run(None, {"image": np.zeros((1, 3, 224, 224), np.float32)})
print([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1])
"""
RUNTIME_RSS = """
import sys
from splitinf.edge.config import DeviceConfig
from splitinf.edge.runtime import Runtime
runtime = Runtime(sys.argv[1], DeviceConfig(intra_op_threads=1), background_probes=False)  # warm: every option ran
print([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1])
"""


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, check=True, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload]


def spread_cuts(model: onnx.ModelProto, count: int) -> list[str]:
    """The input cut and ``count - 1`` single-tensor cuts spread evenly over the rest of the model."""
    cuts = enumerate_cuts(model)
    singles = [c for c in cuts[1:-1] if len(c.tensors) == 1]
    picks = [singles[round(i * (len(singles) - 1) / max(count - 2, 1))] for i in range(count - 1)]
    return [cuts[0].id] + list(dict.fromkeys(c.id for c in picks))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def median_rss_kb(script: str, argument: Path, repeats: int) -> float:
    values = [int(run([sys.executable, "-c", script, str(argument)]).stdout.split()[-1]) for _ in range(repeats)]
    return statistics.median(values)


def prepare(work: Path, cuts: int) -> tuple[Path, Path, Path, list[str]]:
    model_path, fallback_path, samples = work / "model.onnx", work / "fallback.onnx", work / "calibration.npz"
    model = build_resnet50(batch=1, seed=0)
    onnx.save_model(model, str(model_path))
    onnx.save_model(build_resnet50(batch=1, seed=1, width=0.25), str(fallback_path))
    images = np.random.default_rng(0).standard_normal((8, 1, 3, 224, 224)).astype(np.float32)
    np.savez(samples, image=images)
    return model_path, fallback_path, samples, spread_cuts(model, cuts)


def plan_with_time(command: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of the plan command, from GNU time's report."""
    start = time.perf_counter()
    result = run(["/usr/bin/time", "-v", *command])
    wall = time.perf_counter() - start
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))  # type: ignore[union-attr]
    progress = [line for line in re.split(r"[\r\n]", result.stderr) if "ETA" in line or "elapsed" in line]
    if progress:
        print("  progress, last line:", progress[-1].strip())
    print(" ", result.stdout.strip())
    return peak_kb / 1024, wall


def chain_over_single_head(plan_dir: Path, model_path: Path, rounds: int = 20) -> dict[str, tuple[int, float]]:
    """Per held fp32 cut with segments: (files, median over paired rounds of chain time / single-file head time),
    the price of holding each weight once (session boundaries, onnxruntime's blocked layout reordered at each)."""
    from splitinf.contract.plan import load_plan
    from splitinf.edge.chain import SessionPool
    from splitinf.offline.graph import find_cut, load_model
    from splitinf.offline.partition import split_model
    from splitinf.ort import SessionSettings, open_session

    plan, model = load_plan(plan_dir), load_model(model_path)
    settings = SessionSettings().with_threads(1)
    pool = SessionPool(plan.path, settings)
    feeds = {"image": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    ratios: dict[str, tuple[int, float]] = {}
    for option in plan.split_options:
        if option.codec != "fp32" or not option.head or option.cut_id is None:
            continue
        chain = pool.chain(option.id, option.head)
        head = open_session(split_model(model, find_cut(model, option.cut_id)).head.SerializeToString(), settings)
        paired = []
        for i in range(rounds + 2):
            start = time.perf_counter()
            chain.run(feeds)
            middle = time.perf_counter()
            head.run(None, feeds)
            if i >= 2:  # warm-up
                paired.append((middle - start) / (time.perf_counter() - middle))
        ratios[option.cut_id] = (len(option.head), statistics.median(paired))
    return ratios


def measure(work: Path, args: argparse.Namespace) -> dict[str, object]:
    """Profile, plan, size and load the plan in ``work``; the figures to print."""
    model, fallback, samples, cut_ids = prepare(work, args.cuts)
    splitinf = [sys.executable, "-m", "splitinf"]
    profile, plan_dir = work / "profile.json", work / "plan"
    run([*splitinf, "profile", str(model), "-o", str(profile), "--cuts", ",".join(cut_ids),
         "--repeats", "3", "--warmup", "1", "--passes", "1", "--fallback", str(fallback)])  # fmt: skip
    plan_command = [*splitinf, "plan", str(model), "--device", str(profile), "--server", str(profile),
                    "--fallback", str(fallback), "--calibration", str(samples), "--progress",
                    "-o", str(plan_dir)]  # fmt: skip
    peak_mb, plan_s = plan_with_time(plan_command + (["--hold-all"] if args.hold_all else []))
    plan = json.loads((plan_dir / "plan.json").read_text())
    files = [o.get("head") or o.get("model") or [] for o in plan["options"]]
    return {
        "model_mb": model.stat().st_size / 1e6,
        "fallback_mb": fallback.stat().st_size / 1e6,
        "cuts": len(cut_ids),
        "held": [o["id"] for o in plan["options"]],
        "peak_mb": peak_mb,
        "plan_s": plan_s,
        "source_bytes": model.stat().st_size + fallback.stat().st_size,
        "device_bytes": folder_bytes(plan_dir / "device"),
        "device_files": len({f for option_files in files for f in option_files}),
        "one_file_each": sum((plan_dir / f).stat().st_size for option_files in files for f in option_files),
        "full_kb": median_rss_kb(FULL_MODEL_RSS, model, args.repeats),
        "runtime_kb": median_rss_kb(RUNTIME_RSS, plan_dir, args.repeats),
        "latency": chain_over_single_head(plan_dir, model),
    }


def report(f: dict[str, Any], repeats: int) -> None:
    source, device, each = f["source_bytes"], f["device_bytes"], f["one_file_each"]
    print()
    print(f"model: ResNet-50-like, {f['model_mb']:.1f} MB; fallback {f['fallback_mb']:.1f} MB")
    print(f"cuts weighed: {f['cuts']}; options held: {len(f['held'])} ({', '.join(f['held'])})")
    print(f"plan: peak RSS {f['peak_mb']:.0f} MB (target < 1024), {f['plan_s']:.0f} s")
    print(
        f"device part: {device / 1e6:.1f} MB in {f['device_files']} files; model + fallback {source / 1e6:.1f} MB; "
        f"ratio {device / source:.3f} (target <= 1.15); as one file per option it would be "
        f"{each / 1e6:.1f} MB ({each / source:.2f}x)"
    )
    print(
        f"resident memory (VmRSS, median of {repeats}): device runtime with the plan "
        f"{f['runtime_kb'] / 1024:.0f} MB; onnxruntime with the full model alone {f['full_kb'] / 1024:.0f} MB; "
        f"ratio {f['runtime_kb'] / f['full_kb']:.3f} (target <= 1.2)"
    )
    shown = ", ".join(f"{cut} ({files} files) {ratio:.3f}" for cut, (files, ratio) in f["latency"].items())
    print(f"head latency as a chain / as one file (fp32, median of paired runs): {shown or 'no fp32 head held'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", type=int, default=6, help="cuts profiled and weighed, the input cut included")
    parser.add_argument("--repeats", type=int, default=3, help="subprocesses per RSS figure (median)")
    parser.add_argument("--hold-all", action="store_true", help="hold every option (the most heads a plan holds)")
    parser.add_argument("--work", help="keep the model, profiles and plan here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="splitinf-devmem-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        figures = measure(work, args)
    report(figures, args.repeats)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
