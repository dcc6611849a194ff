"""Many devices, one tail server: static plans against live-corrected ones, with and without a spread.

    python benchmarks/bench_many_devices.py [--devices 1,4,8] [--seconds 15] [--device-cpus 0.15]
                                            [--server-cpus 0.5] [--rate-mbit 50] [--modes static,corrected,spread]
                                            [--spread-margin 0.2] [--spread-patience-s 5] [--no-cpu-limit]

One ``splitinf serve`` process (in a cgroup of ``--server-cpus``) serves the tails; N emulated
devices, each a process of its own in its own cgroup of ``--device-cpus`` (the emulated Pi),
each behind its own ``splitinf.tools.faults.FaultProxy`` capped at ``--rate-mbit`` up, run a
``Runtime`` in a closed loop (the next request when the last is answered) for ``--seconds``.
A device starts unlimited (imports and session warm-up) and gets its quota once it is ready.

The plan holds two splits of one model (an MLP whose first layer is ~8 ms on one core) and a
fallback: OFFLOAD (cut at the input: 128 kB up, the whole model on the server) and LATE (the
heavy layer on the device, 16 kB up, a tail of microseconds). Its profiles are taken first, each
model in a process limited as it will run (the head at ``--device-cpus``, the whole model at
``--server-cpus``): the idle server and the emulated Pi. So the plan picks OFFLOAD: right for
one device, wrong once N devices share the server. ``static`` decides on
the profiles as planned (the runtime before live correction: only its network estimates move,
and a server's queue, which it takes for a slower link, moves them too); ``corrected`` on the
profiles corrected live (splitinf.edge.correction) with no spread (every device decides by the
rule alone: margin and patience 0); ``spread`` with a spread (splitinf.edge.policy.Spread: by
default the device's, a margin up to 20% and a patience up to 5 s), each device seeded with its
number.

Printed per N and mode: per-device median and p99 latency (ms, over the devices: the median of
their medians and the worst p99), the share of answers by each option, fallbacks, and the
server's throughput (answers it gave per second, all devices together) and how often a device
changed option (per device, over the run).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

MODEL_SIZES = (64, 16384, 8, 4)
BATCH = 512
OFFLOAD, LATE = "split:x:fp32", "split:relu_1:fp32"
PERIOD_US = 20_000  # CFS period of every cgroup here
MODES = ("static", "corrected", "spread")


def worker(plan_dir: str, target: str, mode: str, seconds: float, seed: int, spread: tuple[float, float]) -> int:
    """One emulated device: a Runtime in a closed loop once "go" arrives on stdin; one JSON line out."""
    from splitinf.edge.config import DeviceConfig
    from splitinf.edge.correction import CorrectionConfig
    from splitinf.edge.policy import PolicyConfig
    from splitinf.edge.runtime import Runtime

    budget = 1.0
    margin, patience = spread if mode == "spread" else (0.0, 0.0)
    policy = PolicyConfig(budget_s=budget, spread_margin=margin, spread_patience_s=patience)
    config = DeviceConfig(server=target, budget_s=budget, prior_bandwidth_bps=50e6, policy=policy, spread_seed=seed)
    correction = CorrectionConfig(window_s=10.0, relax_s=10.0, enabled=mode != "static")
    with Runtime(plan_dir, config, correction=correction) as runtime:
        spec = runtime.plan.inputs[0]
        feeds = {spec.name: np.random.default_rng(0).standard_normal((BATCH, MODEL_SIZES[0])).astype(np.float32)}
        for _ in range(3):
            runtime.infer(feeds)  # connected and warm before the clock starts
        print("ready", flush=True)
        sys.stdin.readline()
        answers: list[tuple[str, float]] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            result = runtime.infer(feeds)
            answers.append((result.option_id, result.latency.total_s))
        final = runtime.corrector.correction(runtime.clock()).to_json()
        spread = runtime.policy.spread.to_json()
    print(json.dumps({"answers": answers, "correction": final, "spread": spread}), flush=True)
    return 0


def _write_plan(root: Path, device_head_s: float, server_full_s: float) -> None:
    from splitinf.tools.testing.graphs import mlp
    from splitinf.tools.testing.plans import write_plan_dir

    model = mlp(batch=BATCH, sizes=MODEL_SIZES)
    fallback = mlp(batch=BATCH, seed=7, sizes=(MODEL_SIZES[0], 8, MODEL_SIZES[-1]))
    cuts = {"x": (0.0, server_full_s), "relu_1": (device_head_s, 0.0001)}
    write_plan_dir(root, model, fallback, cuts, name="mlp", fallback_accuracy=0.5, fallback_seconds=0.005)


def profile_worker(model_path: str) -> int:
    """Time one model, one onnxruntime thread, once "go" arrives (the quota is set by then)."""
    from splitinf.ort import SessionSettings, open_session

    session = open_session(model_path, SessionSettings().with_threads(1))
    feed = {"x": np.zeros((BATCH, MODEL_SIZES[0]), np.float32)}
    session.run(None, feed)
    print("ready", flush=True)
    sys.stdin.readline()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    print(json.dumps({"median_s": statistics.median(times)}), flush=True)
    return 0


def _start_limited(argv: list[str], cpus: float, groups: list[tuple[Any, float]], limit: bool) -> subprocess.Popen[str]:
    """A process in a new cgroup, unlimited until ``_ready_then_go`` gives it ``cpus`` (imports and
    warm-up at full speed); the cgroup and its quota to come are appended to ``groups``."""
    from splitinf.errors import UsageError
    from splitinf.tools.bench.cgroup import create_cpu_cgroup

    group = None
    if limit:
        try:
            group = create_cpu_cgroup(2.0, period_us=PERIOD_US)
            groups.append((group, cpus))
        except UsageError:
            group = None
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=group.join_preexec() if group is not None else None,
    )


def _ready_then_go(processes: list[subprocess.Popen[str]], groups: list[tuple[Any, float]]) -> None:
    for process in processes:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a worker exited before it was ready ({process.wait()})")
    for group, cpus in groups:
        group.set_cpus(cpus)
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()


def _profile(model_path: Path, cpus: float, limit: bool) -> float:
    """The model's median time in a process limited to ``cpus``: a profile taken on the machine as it serves."""
    groups: list[tuple[Any, float]] = []
    process = _start_limited([sys.executable, __file__, "--profile-worker", str(model_path)], cpus, groups, limit)
    try:
        _ready_then_go([process], groups)
        out, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for group, _ in groups:
            group.remove()
    return float(json.loads(out.strip().splitlines()[-1])["median_s"])


def _serve(repo: Path, group: Any) -> tuple[Any, str]:
    from splitinf.tools.bench.harness import _start_subprocess

    argv = [sys.executable, "-m", "splitinf", "serve", "--repo", str(repo), "--port", "0", "--metrics-port", "-1"]
    argv += ["--threads", "1"]
    if group is None:
        return _start_subprocess(argv, "serving on ", "tail server")
    # _start_subprocess has no preexec hook: the server joins its cgroup through a shell
    shell = f"echo $$ > {shlex.quote(str(group.procs_file))} && exec {shlex.join(argv)}"
    return _start_subprocess(["sh", "-c", shell], "serving on ", "tail server")


def _run_devices(n: int, mode: str, args: argparse.Namespace, plan_dir: Path, target: str) -> dict[str, Any]:
    from splitinf.tools.faults.proxy import DirectionFaults, FaultProxy, FaultSettings

    proxies: list[Any] = []
    groups: list[tuple[Any, float]] = []
    devices: list[subprocess.Popen[str]] = []
    try:
        for index in range(n):
            proxy = FaultProxy(
                target, settings=FaultSettings(upstream=DirectionFaults(rate_kbit=args.rate_mbit * 1000))
            )
            proxies.append(proxy.start())
            argv = [sys.executable, __file__, "--worker", str(plan_dir), proxy.address, mode, str(args.seconds)]
            argv += [str(index), str(args.spread_margin), str(args.spread_patience_s)]  # index: the spread's seed
            devices.append(_start_limited(argv, args.device_cpus, groups, not args.no_cpu_limit))
        _ready_then_go(devices, groups)
        results = []
        for device in devices:
            out, _ = device.communicate(timeout=args.seconds + 120)
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for device in devices:
            if device.poll() is None:
                device.kill()
                device.wait()
        for proxy in proxies:
            proxy.stop()
        for group, _ in groups:
            group.remove()
    return _summary(results, args.seconds, limited=bool(groups))


def _summary(results: list[dict[str, Any]], seconds: float, limited: bool) -> dict[str, Any]:
    medians, p99s, options, switches = [], [], Counter[str](), []
    for result in results:
        chosen = [option for option, _ in result["answers"]]
        switches.append(sum(a != b for a, b in zip(chosen, chosen[1:], strict=False)))
        latencies = sorted(s for _, s in result["answers"])
        medians.append(statistics.median(latencies))
        p99s.append(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))])
        options.update(option for option, _ in result["answers"])
    total = sum(options.values())
    served = options[OFFLOAD] + options[LATE]
    return {
        "median_ms": statistics.median(medians) * 1e3,
        "worst_p99_ms": max(p99s) * 1e3,
        "offload": options[OFFLOAD] / total,
        "late": options[LATE] / total,
        "fallback": options["fallback"] / total,
        "answers": total,
        "server_per_s": served / seconds,
        "switches": statistics.mean(switches),
        "spreads": [r["spread"] for r in results],
        "tail_factors": [r["correction"]["tails"] for r in results],
        "queues_s": [r["correction"]["queues_s"] for r in results],
        "cpu_limited": limited,
    }


def main() -> int:
    from splitinf.edge.policy import PolicyConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,4,8", help="comma-separated device counts")
    parser.add_argument("--seconds", type=float, default=15.0, help="closed-loop time per run")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--device-cpus", type=float, default=0.15)
    parser.add_argument("--server-cpus", type=float, default=0.5)
    parser.add_argument("--rate-mbit", type=float, default=50.0, help="each device's uplink cap")
    parser.add_argument("--no-cpu-limit", action="store_true", help="plain processes, no cgroup quotas")
    parser.add_argument("--spread-margin", type=float, default=PolicyConfig.spread_margin)
    parser.add_argument("--spread-patience-s", type=float, default=PolicyConfig.spread_patience_s)
    parser.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    parser.add_argument("--profile-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile_worker:
        return profile_worker(args.profile_worker)
    if args.worker:
        plan_dir, target, mode, seconds, seed, margin, patience = args.worker
        return worker(plan_dir, target, mode, float(seconds), int(seed), (float(margin), float(patience)))
    modes = args.modes.split(",")
    if not set(modes) <= set(MODES):
        parser.error(f"--modes: expected some of {', '.join(MODES)}, got {args.modes!r}")

    from splitinf.contract.plan import load_plan
    from splitinf.errors import UsageError
    from splitinf.tools.bench.cgroup import create_cpu_cgroup
    from splitinf.tools.bench.harness import _stop

    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    server_group = None
    if not args.no_cpu_limit:
        try:
            server_group = create_cpu_cgroup(args.server_cpus, period_us=PERIOD_US)
        except UsageError as exc:
            print(f"no cgroup CPU quota here ({exc}): devices and server run as plain processes", flush=True)
    emulation = (
        f"devices: one process each, cgroup {args.device_cpus:g} CPU (20 ms period) once ready; "
        f"server: cgroup {args.server_cpus:g} CPU, 1 onnxruntime thread; uplinks: FaultProxy {args.rate_mbit:g} Mbit/s"
        if server_group is not None
        else "plain processes, no CPU quotas"
    )
    print("emulation:", emulation, flush=True)
    print(f"spread: margins up to {args.spread_margin:g}, patience up to {args.spread_patience_s:g} s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plan_dir = Path(tmp) / "plan"
        _write_plan(plan_dir, 1.0, 1.0)  # the files to profile
        limit = server_group is not None
        (head_file,) = load_plan(plan_dir).option(LATE).head  # one segment: the input to the heavy layer
        head_s = _profile(plan_dir / head_file, args.device_cpus, limit)
        full_s = _profile(plan_dir / "source" / "model.onnx", args.server_cpus, limit)
        _write_plan(plan_dir, head_s, full_s)
        print(f"profiles (each in its cgroup): device head {head_s * 1e3:.1f} ms, server model {full_s * 1e3:.1f} ms")
        server, target = _serve(plan_dir / "server", server_group)
        try:
            for n in [int(x) for x in args.devices.split(",")]:
                for mode in modes:
                    row = {"devices": n, "mode": mode, **_run_devices(n, mode, args, plan_dir, target)}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            _stop(server)
            if server_group is not None:
                server_group.remove()
    columns = ("median ms", "worst p99", "offload", "late", "fallbk", "server/s", "switches")
    print(f"{'N':>2} {'mode':9} " + " ".join(f"{c:>9}" for c in columns))
    for r in rows:
        print(
            f"{r['devices']:>2} {r['mode']:9} {r['median_ms']:9.1f} {r['worst_p99_ms']:9.1f} "
            f"{r['offload']:9.0%} {r['late']:9.0%} {r['fallback']:9.0%} {r['server_per_s']:9.1f} {r['switches']:9.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
