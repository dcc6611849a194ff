"""int8 device models (issue 16): accuracy, time and size of int8 heads and fallbacks, as the planner sees them.

    python benchmarks/bench_int8.py [--runs 5] [--repeats 10] [--skip-digits] [--skip-resnet] [--out DIR]

Runs the real commands' functions (``splitinf profile --quantize int8`` and ``splitinf plan --quantize
int8``) at ``--threads 1`` on this machine, device and server profiles alike:

- digits (shipped pair, calibrated and held out on the shipped test images with labels): every int8
  head option (``--hold-all``) and the int8 fallback, with top-1 agreement against fp32, accuracy,
  time and size.
- the ResNet-50-like model (random weights; its samples are seeded standard-normal images, 12 to
  calibrate and 12 held out; a width-0.25 variant as the fallback), profiled at the input, the end of
  each stage and the flatten, planned ``--no-local --max-device-share params:1``: the fp32 and int8
  heads at the plan's deepest candidate cut as the device runs them (the plan's chains of segment
  files), and the int8 head quantized whole as one file, timed against each other, interleaved,
  ``--runs`` medians of ``--repeats`` runs each, the ratio of each run and the median ratio; the
  device part of the plan (bytes of ``device/``) without and with ``--quantize int8``; and with
  ``--hold-all`` (every int8 head held, two wire codecs at each cut) the int8 segments' bytes, each
  file once, against the int8 heads' own sizes added up (what one file per int8 head would take).

Figures are from one run on a shared machine: compare the ratios, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from splitinf.contract.plan import Plan
from splitinf.edge.chain import SessionPool
from splitinf.offline.device_share import DeviceShare
from splitinf.offline.graph import find_cut
from splitinf.offline.partition import split_model
from splitinf.offline.planner import plan_model
from splitinf.offline.profiling import profile_file
from splitinf.offline.quantize import quantize_model
from splitinf.offline.sessions import make_session
from splitinf.ort import Chain, SessionSettings
from splitinf.tools.models import digits_fallback_path, digits_main_path, load_digits_test
from splitinf.tools.models.resnet import build_resnet50

RESNET_CUTS = ("image", "layer1.2.relu3", "layer2.3.relu3", "layer3.5.relu3", "layer4.2.relu3", "flatten")


def device_bytes(plan_dir: Path, folder: str = "device") -> int:
    return sum(f.stat().st_size for f in (plan_dir / folder).rglob("*") if f.is_file())


def profiles(model: Path, fallback: Path, work: Path, repeats: int, cuts: tuple[str, ...] | None) -> tuple[Path, Path]:
    device, server = work / "device.json", work / "server.json"
    common: dict[str, Any] = dict(threads=1, cut_ids=cuts, codecs="fp32,int8", repeats=repeats, warmup=2, passes=2)
    start = time.perf_counter()
    profile_file(model, device, fallback=fallback, quantize="int8", **common)
    print(f"  profile --quantize int8 (device): {time.perf_counter() - start:.1f} s")
    profile_file(model, server, **common)
    return device, server


def plan(model: Path, device: Path, server: Path, fallback: Path, samples: Path, out: Path, **kwargs: Any) -> Plan:
    start = time.perf_counter()
    result = plan_model(
        model,
        device_profile=device,
        server_profile=server,
        fallback=fallback,
        calibration=samples,
        output=out,
        codecs="fp32,int8",
        threads=1,
        **kwargs,
    )
    flags = " ".join(
        f"--{key.replace('_', '-')}" + ("" if value is True else f" {value}")
        for key, value in kwargs.items()
        if key in ("quantize", "hold_all", "max_device_share") and value
    )
    print(f"  plan {out.name} {flags}: {time.perf_counter() - start:.1f} s")
    return result


def describe_fallbacks(result: Plan) -> None:
    for variant in result.profiles["evaluated"]["fallbacks"]:
        agreement = (variant["fidelity"].get("held_out") or {}).get("top1_agreement")
        print(
            f"  fallback {variant['precision']}: {variant['seconds'] * 1e6:.1f} us, {variant['device_bytes']:,} bytes, "
            f"accuracy {variant['accuracy']:.4f}"
            + (f", top-1 agreement with fp32 fallback {agreement:.4f}" if agreement is not None else "")
            + (" (held)" if variant["held"] else "")
        )


def bench_digits(work: Path, repeats: int) -> None:
    print("digits (shipped pair; 270 calibration, 90 held-out test images with labels; --threads 1)")
    images, labels = load_digits_test()
    samples = work / "digits.npz"
    np.savez(samples, image=images, labels=labels)
    model, fallback = digits_main_path(), digits_fallback_path()
    device, server = profiles(model, fallback, work, repeats, None)
    result = plan(model, device, server, fallback, samples, work / "digits-plan", quantize="int8", hold_all=True)
    int8 = [o for o in result.split_options if o.precision == "int8"]
    agreement = [o.fidelity[k]["top1_agreement"] for o in int8 for k in ("calibration", "held_out")]
    ratios = [o.head_seconds / result.option(o.id.removesuffix(":int8head")).head_seconds for o in int8]
    print(
        f"  {len(int8)} int8 head options of {len(result.split_options)}: top-1 agreement with fp32 "
        f"min {min(agreement):.4f} (calibration and held-out), accuracy min {min(o.accuracy or 0 for o in int8):.4f}; "
        f"int8/fp32 head time median {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x)"
    )
    describe_fallbacks(result)


def interleaved_ratio(heads: dict[str, Chain], feed: dict[str, np.ndarray], runs: int, repeats: int) -> None:
    """Median time of each head, interleaved run by run, and each one's ratio to the first (fp32)."""
    for head in heads.values():
        for _ in range(3):
            head.run(feed)
    medians: dict[str, list[float]] = {name: [] for name in heads}
    for _ in range(runs):
        for name, head in heads.items():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                head.run(feed)
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times))
    base, *others = heads
    print(
        f"  interleaved, {runs} runs x {repeats}: "
        + ", ".join(f"{name} {statistics.median(medians[name]) * 1e3:.1f} ms" for name in heads)
    )
    for name in others:
        ratios = [i / f for f, i in zip(medians[base], medians[name], strict=True)]
        print(
            f"  {name}/{base} per run {', '.join(f'{r:.2f}' for r in ratios)}; "
            f"median {statistics.median(ratios):.2f}x (goal <= 0.7x)"
        )


def bench_resnet(work: Path, runs: int, repeats: int) -> None:
    print(
        "ResNet-50-like (random weights; 12 calibration + 12 held-out seeded images; fallback width 0.25; --threads 1)"
    )
    model_path, fallback_path, samples = work / "resnet50.onnx", work / "resnet50_w025.onnx", work / "resnet.npz"
    full = build_resnet50()
    onnx.save(full, model_path)
    onnx.save(build_resnet50(width=0.25, seed=1), fallback_path)
    rng = np.random.default_rng(0)
    np.savez(samples, image=rng.standard_normal((24, 1, 3, 224, 224), dtype=np.float32))
    device, server = profiles(model_path, fallback_path, work, repeats, RESNET_CUTS)
    held_out = work / "resnet_held.npz"
    with np.load(samples) as data:
        np.savez(work / "resnet_cal.npz", image=data["image"][:12])
        np.savez(held_out, image=data["image"][12:])
    calibration = work / "resnet_cal.npz"
    # --no-local --max-device-share params:1: every profiled cut weighed, the flatten too (--no-local alone caps
    # heads at half the parameters)
    base = dict(held_out=held_out, include_local=False, max_device_share=DeviceShare("params", 1.0))
    fp32_plan = plan(model_path, device, server, fallback_path, calibration, work / "resnet-fp32", **base)
    int8_plan = plan(
        model_path, device, server, fallback_path, calibration, work / "resnet-int8", quantize="int8", **base
    )
    all_plan = plan(
        model_path,
        device,
        server,
        fallback_path,
        calibration,
        work / "resnet-all",
        quantize="int8",
        hold_all=True,
        **base,
    )
    deepest = all_plan.profiles["evaluated"]["cuts"][-1]
    fp32_head, int8_head = all_plan.option(f"split:{deepest}:fp32"), all_plan.option(f"split:{deepest}:fp32:int8head")
    print(
        f"  deepest candidate cut {deepest}: profile head fp32 {fp32_head.head_seconds * 1e3:.1f} ms, "
        f"int8 {int8_head.head_seconds * 1e3:.1f} ms ({int8_head.head_seconds / fp32_head.head_seconds:.2f}x); "
        f"size {fp32_head.device_bytes / 1e6:.1f} MB -> {int8_head.device_bytes / 1e6:.1f} MB; "
        f"top-1 agreement with fp32 held-out {int8_head.fidelity['held_out']['top1_agreement']:.3f}"
    )
    with np.load(calibration) as data:
        cal = [{"image": data["image"][i]} for i in range(len(data["image"]))]
    whole = quantize_model(split_model(full, find_cut(full, deepest)).head, cal)
    whole_bytes = len(whole.model.SerializeToString())
    print(
        f"  int8 head at {deepest}: its chain {int8_head.device_bytes / 1e6:.2f} MB "
        f"({sum('segments-int8' in f for f in int8_head.head)} int8 segments of {len(int8_head.head)} files), "
        f"quantized whole as one file {whole_bytes / 1e6:.2f} MB"
    )
    files = SessionPool(all_plan.path, SessionSettings().with_threads(1))
    heads = {
        "fp32 head (plan's chain)": files.chain(fp32_head.id, fp32_head.head),
        "int8 head (plan's chain)": files.chain(int8_head.id, int8_head.head),
        "int8 head (whole, one file)": Chain("whole", [make_session(whole.model, 1)]),
    }
    del whole
    interleaved_ratio(heads, cal[0], runs, repeats)
    int8_options = [o for o in all_plan.split_options if o.precision == "int8"]
    print(
        f"  --hold-all: {len(int8_options)} int8 heads held ({len(all_plan.split_options)} split options); "
        f"int8 segments, each file once: {device_bytes(work / 'resnet-all', 'device/segments-int8') / 1e6:.1f} MB "
        f"against {sum(o.device_bytes for o in int8_options) / 1e6:.1f} MB for the int8 heads' own sizes added up; "
        f"device/ in all {device_bytes(work / 'resnet-all') / 1e6:.1f} MB"
    )
    for option in int8_plan.split_options:
        print(
            f"  held with --quantize int8: {option.id} ({option.device_bytes / 1e6:.1f} MB, accuracy {option.accuracy})"
        )
    print(
        f"  device part of the plan (device/, no local): fp32 only {device_bytes(work / 'resnet-fp32') / 1e6:.1f} MB "
        f"({len(fp32_plan.split_options)} heads + fallback), with --quantize int8 "
        f"{device_bytes(work / 'resnet-int8') / 1e6:.1f} MB ({len(int8_plan.split_options)} heads + fallback)"
    )
    describe_fallbacks(int8_plan)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="int8 heads and fallbacks: accuracy, time, size")
    parser.add_argument("--runs", type=int, default=5, help="interleaved timing runs of the ResNet heads (default 5)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per item (default 10)")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--out", help="keep the profiles and plans here (default: a temporary directory)")
    args = parser.parse_args(argv)
    print(f"command: python benchmarks/bench_int8.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        work = Path(args.out or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_digits:
            (work / "digits").mkdir(exist_ok=True)
            bench_digits(work / "digits", args.repeats)
        if not args.skip_resnet:
            (work / "resnet").mkdir(exist_ok=True)
            bench_resnet(work / "resnet", args.runs, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
