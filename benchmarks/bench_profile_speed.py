"""Benchmark: how long `splitinf profile --role device` takes, and its peak memory, on the
ResNet-50-like and EfficientNet-B0-like models over every cut.

Run:  python benchmarks/bench_profile_speed.py [--models resnet50,efficientnet_b0] [--role device]
          [--threads 1] [--repeats 20] [--passes 2] [--out DIR]

Each model is written to DIR (a temporary directory by default) by one child process, then profiled
by the CLI in another: the wall time is the child's, the peak RSS its ``ru_maxrss`` (from
``os.wait4``). Linux carries the high-water mark of the process that forks into the child's figure
across exec, so this parent imports no onnx and builds no model: it stays at a few tens of MB.
Prints each command, its wall time and peak RSS against the targets (ResNet-50: 3 min and 600 MB;
EfficientNet-B0: 2 min), and the profile's check of the segment sums against whole heads. The
EfficientNet-B0 here is built with onnx.helper (:mod:`splitinf.tools.models.efficientnet`): no
torchvision or model hub.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILDERS = {
    "resnet50": "splitinf.tools.models.resnet:build_resnet50",
    "efficientnet_b0": "splitinf.tools.models.efficientnet:build_efficientnet_b0",
}
TARGET_SECONDS = {"resnet50": 180.0, "efficientnet_b0": 120.0}
TARGET_RSS_MB = {"resnet50": 600.0}


def write_model(name: str, path: Path) -> None:
    """Build the model in a child process (see the module docstring for why not here) and save it."""
    module, function = BUILDERS[name].split(":")
    script = f"import onnx; from {module} import {function}; onnx.save_model({function}(), {str(path)!r})"
    subprocess.run([sys.executable, "-c", script], check=True)


def run_child(command: list[str]) -> tuple[int, float, float]:
    """(exit status, wall seconds, peak RSS in MB) of ``command`` run as a child process."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,efficientnet_b0")
    parser.add_argument("--role", default="device", choices=("device", "server", "both"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--out", help="keep the models and profiles here (default: a temporary directory)")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(BUILDERS)}")
    print(f"command: python benchmarks/bench_profile_speed.py {shlex.join(sys.argv[1:])}".rstrip())
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        failed = 0
        for name in names:
            model_path, profile_path = out / f"{name}.onnx", out / f"{name}.{args.role}.json"
            write_model(name, model_path)
            for stale in (profile_path, profile_path.with_name(profile_path.name + ".partial")):
                stale.unlink(missing_ok=True)  # a kept journal would be resumed, not measured
            command = [
                sys.executable, "-m", "splitinf", "profile", str(model_path), "-o", str(profile_path),
                "--role", args.role, "--threads", str(args.threads),
                "--repeats", str(args.repeats), "--passes", str(args.passes),
            ]  # fmt: skip
            print(f"\n$ {shlex.join(command)}")
            status, seconds, rss_mb = run_child(command)
            if status != 0:
                print(f"{name}: failed with exit status {status}")
                failed += 1
                continue
            profile = json.loads(profile_path.read_text())
            check = profile["check"]
            limit_s, limit_mb = TARGET_SECONDS.get(name), TARGET_RSS_MB.get(name)
            time_ok = (
                "" if limit_s is None else f" (target < {limit_s:.0f} s: {'met' if seconds < limit_s else 'MISSED'})"
            )
            rss_ok = (
                "" if limit_mb is None else f" (target < {limit_mb:.0f} MB: {'met' if rss_mb < limit_mb else 'MISSED'})"
            )
            print(
                f"{name}: {len(profile['cuts'])} cuts, {len(profile['segments'])} segments, "
                f"full model {profile['model_seconds']['median'] * 1e3:.1f} ms\n"
                f"  wall {seconds:.1f} s{time_ok}\n  peak RSS {rss_mb:.0f} MB{rss_ok}\n"
                f"  check: raw segment sums off by up to {check['max_abs_error']:.1%} from "
                f"{len(check['parts'])} whole parts; scaled sums, each estimated without its own anchor, off by "
                f"up to {check['max_abs_held_out_error']:.1%}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
