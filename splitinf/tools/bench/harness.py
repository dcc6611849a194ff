"""The benchmark orchestrator: emulate a device, a server and the link between them, and measure.

Processes (all on this machine)::

    orchestrator (this process, no limit)
      ├── device worker  python -m splitinf.tools.bench.device   in a cgroup with a CPU quota, N ORT threads
      ├── tail server    python -m splitinf serve          no limit (the workstation)
      ├── echo server    python -m splitinf.tools.bench.echo     no limit (framework-overhead yardstick)
      └── FaultProxy     a thread here: device -> proxy (bandwidth cap, RTT/2 each way) -> server

Steps: prepare the model (and fallback, calibration samples, one input); pick candidate cuts;
profile the device inside the limited process and the server in an unlimited one; plan with
E's planner from those profiles; serve the plan's tails; measure local once and every held
option at every grid point through the shaped link; then framework overhead against a bare
gRPC echo, failover and recovery around a cut link with a real ``Runtime``, and the tail
server's throughput with concurrent clients. Results go to ``bench.json``, ``bench.md`` and
``bench.svg`` in the output directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import selectors
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from splitinf.contract.plan import DEFAULT_BUDGET_S
from splitinf.errors import SplitinfError, UsageError
from splitinf.tools.bench.bench_report import bench_markdown, bench_svg, model_accuracy, summarise, summarise_cell
from splitinf.tools.bench.cgroup import CpuCgroup, create_cpu_cgroup

__all__ = ["BenchConfig", "choose_cuts", "command_line", "quick_config", "run_bench"]

# The product's defaults (splitinf.edge.policy.PolicyConfig) are used for the full run; the quick run
# shortens the waits so a test finishes in seconds. Either way the settings go into the output.
QUICK_POLICY = {
    "open_s": 0.5,
    "min_dwell_s": 0.5,
    "stabilisation_s": 1.0,
    "probe_interval_s": 0.2,
    "half_open_probes": 2,
}


@dataclass(frozen=True)
class BenchConfig:
    out: Path
    model: str = "resnet50"  # resnet50 | digits | PATH to an ONNX model
    fallback: str | None = None  # for PATH: the small fallback model
    bandwidths_mbit: tuple[float, ...] = (1.0, 10.0, 100.0)
    rtts_ms: tuple[float, ...] = (2.0, 20.0, 80.0)
    budget_s: float = DEFAULT_BUDGET_S  # the plan's budget: "planned" is the device's rule within it
    # 0.15 of one core here at 1 onnxruntime thread runs ResNet-50 in ~240 ms with a tight p90, about a
    # Pi 4's figure; 4 threads in a 0.5-CPU quota give the same median but spin, get throttled in bursts,
    # and make the profiles useless (see benchmarks/README.md). None: no limit (stated in the outputs).
    device_cpus: float | None = 0.15
    cpu_period_us: int = 10_000
    device_threads: int = 1
    requests: int = 10
    warmup: int = 1
    max_cell_s: float = 8.0
    server_live: bool = True  # predictions from the running server's tail times (profile --server), not offline
    skip_factor: float = 3.0
    skip_min_s: float = 2.0
    codecs: tuple[str, ...] = ("fp32", "fp16", "int8")
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # --shape, for a model PATH
    samples: str | None = None  # --samples, for a model PATH
    cuts: tuple[str, ...] | None = None
    max_cuts: int = 4
    profile_repeats: int = 10
    profile_warmup: int = 1
    calibration_samples: int = 8
    concurrency: tuple[int, ...] = (1, 2, 4)
    throughput_s: float = 4.0
    failover: bool = True
    outage_s: float = 3.0
    policy: dict[str, Any] = field(default_factory=dict)
    link: str = "proxy"
    command: str = "splitinf bench"
    progress: bool = True


def device_pause_s(config: BenchConfig) -> float:
    """Idle time before each of the device's profiled and local runs: one quota period under a CPU limit.

    A CFS quota refills every period, so a run that starts after idle time gets a fresh quota and runs
    its first ``quota`` of CPU at full speed; back to back, every run starts throttled. The measured
    split options always start after a network call, which is idle time: the profile and the local
    runs are timed the same way, or the emulated Pi would be slower in its profile than in its work
    (by up to 3x for a head of a few milliseconds of CPU). A real Pi has no quota: 0 without a limit."""
    return config.cpu_period_us / 1e6 if config.device_cpus is not None else 0.0


def quick_config(out: Path, **overrides: Any) -> BenchConfig:
    """The tiny configuration of ``--quick``: the digits pair, few requests, short policy waits."""
    settings: dict[str, Any] = dict(
        out=out,
        model="digits",
        bandwidths_mbit=(0.2, 100.0),
        rtts_ms=(10.0,),
        device_cpus=0.5,
        device_threads=1,
        requests=5,
        max_cell_s=3.0,
        profile_repeats=3,
        calibration_samples=40,
        concurrency=(1, 2),
        throughput_s=1.0,
        outage_s=1.0,
        policy=dict(QUICK_POLICY),
        max_cuts=3,
    )
    settings.update(overrides)
    return BenchConfig(**settings)


class _Progress:
    def __init__(self, enabled: bool, stream: IO[str] | None = None) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        if self.enabled:
            self.stream.write(f"[bench {time.monotonic() - self.start:6.1f}s] {message}\n")
            self.stream.flush()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start


# --- model preparation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    name: str
    path: Path
    fallback: Path | None
    calibration: Path
    inputs: Path  # the measured input set, one array per input as the device worker feeds it
    description: str
    profile_inputs: Path  # the same set as ``--samples`` reads it: what the profiles time and size

    def feeds(self) -> dict[str, np.ndarray]:
        with np.load(self.inputs, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}


def _prepare_model(config: BenchConfig, work: Path) -> _Prepared:
    import onnx

    rng = np.random.default_rng(0)
    if config.model == "resnet50":
        from splitinf.tools.models.resnet import build_resnet50

        path, fallback = work / "resnet50.onnx", work / "resnet50_fallback.onnx"
        onnx.save_model(build_resnet50(batch=1, seed=0), str(path))
        onnx.save_model(build_resnet50(batch=1, seed=1, width=0.25), str(fallback))
        images = rng.random((config.calibration_samples + 1, 3, 224, 224), dtype=np.float32)
        np.savez(work / "calibration.npz", image=images[1:])
        np.savez(work / "inputs.npz", image=images[:1])
        description = (
            "ResNet-50-like (splitinf.tools.models.resnet.build_resnet50, batch 1, random weights, 25.5 M parameters); "
            "fallback: the same network at width 0.25 (random weights)"
        )
        calibration, inputs = work / "calibration.npz", work / "inputs.npz"
        return _Prepared("resnet50", path, fallback, calibration, inputs, description, inputs)
    if config.model == "digits":
        from splitinf.tools.models import digits_fallback_path, digits_main_path, load_digits_test

        images, labels = load_digits_test()
        n = min(config.calibration_samples, len(images) - 1)
        np.savez(work / "calibration.npz", image=images[1 : n + 1], labels=labels[1 : n + 1])
        np.savez(work / "inputs.npz", image=images[:1])
        description = "the shipped digits pair (residual CNN, small fallback), held-out digits as calibration"
        return _Prepared(
            "digits_main", digits_main_path(), digits_fallback_path(), work / "calibration.npz",
            work / "inputs.npz", description, work / "inputs.npz",
        )  # fmt: skip
    return _prepare_file(config, work)


def _prepare_file(config: BenchConfig, work: Path) -> _Prepared:
    """A model PATH on the user's samples, or random inputs at the user's shapes (model_inputs decides)."""
    from splitinf.offline.graph import GraphView, load_model
    from splitinf.offline.inputs import describe_shapes, model_inputs

    path = Path(config.model)
    model = load_model(path)  # ModelLoadError names a missing or broken file
    fallback_path = Path(config.fallback) if config.fallback else None
    if fallback_path is not None:
        load_model(fallback_path)
    inputs = model_inputs(
        GraphView(model).input_specs(),
        samples=config.samples,
        shapes=config.shapes,
        count=config.calibration_samples + 1,
    )
    sets = list(inputs.samples)
    calibration = sets[1:] or sets

    def stacked(chosen: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
        # one entry per sample on a new first axis: the one layout scalar inputs have too
        return {name: np.stack([s[name] for s in chosen]) for name in chosen[0]}

    np.savez(work / "calibration.npz", **stacked(calibration))
    np.savez(work / "inputs.npz", **dict[str, Any](sets[0]))
    np.savez(work / "profile_inputs.npz", **stacked(sets[:1]))
    description = f"{path} ({inputs.source} inputs: {describe_shapes(sets[0])})"
    return _Prepared(
        path.stem, path, fallback_path, work / "calibration.npz", work / "inputs.npz", description,
        work / "profile_inputs.npz",
    )  # fmt: skip


def choose_cuts(cuts: Sequence[Any], max_cuts: int) -> list[str]:
    """Candidate cut ids: the input, the cuts that send fewer bytes than every earlier one, then
    single-tensor cuts spread evenly over the model's FLOPs, up to ``max_cuts`` in all.

    The last cut (the graph outputs: everything on the device) is the local option, not a split.
    """
    if not cuts:
        return []
    first, inner = cuts[0], list(cuts[1:-1])
    chosen = [first]
    smallest = first.bytes_per_sample
    for cut in inner:
        if cut.bytes_per_sample < smallest:
            chosen.append(cut)
            smallest = cut.bytes_per_sample
    if len(chosen) > max_cuts:  # keep the input and the smallest-bytes end, spread the rest
        rest = chosen[1:]
        step = len(rest) / (max_cuts - 1)
        chosen = [first] + [rest[min(len(rest) - 1, int(len(rest) - 1 - i * step))] for i in range(max_cuts - 1)]
    singles = [c for c in inner if len(c.tensors) == 1 and c not in chosen]
    fill = max_cuts - len(chosen)
    total = max(first.total_flops, 1)
    for k in range(1, fill + 1):
        if not singles:
            break
        target = k / (fill + 1)
        pick = min(singles, key=lambda c: abs(c.head_flops / total - target))
        chosen.append(pick)
        singles.remove(pick)
    order = {c.id: i for i, c in enumerate(cuts)}
    return [c.id for c in sorted(chosen, key=lambda c: order[c.id])]


# --- processes ---------------------------------------------------------------------------------------


def _read_line(stream: IO[str], timeout_s: float, what: str) -> str:
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    try:
        if not selector.select(timeout_s):
            raise SplitinfError(f"{what} did not answer within {timeout_s:g} s")
    finally:
        selector.close()
    line = stream.readline()
    if not line:
        raise SplitinfError(f"{what} exited without answering (see its messages above)")
    return line


def _start_subprocess(argv: Sequence[str], prefix: str, what: str, timeout_s: float = 120.0) -> tuple[Any, str]:
    """Start a server process that prints ``PREFIX HOST:PORT`` once bound; returns (process, address)."""
    process = subprocess.Popen(list(argv), stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while True:
        line = _read_line(process.stdout, max(deadline - time.monotonic(), 0.1), what)
        if line.startswith(prefix):
            address = line[len(prefix) :].split()[0]
            threading.Thread(target=lambda: process.stdout.read() if process.stdout else None, daemon=True).start()
            return process, address


def _stop(process: Any) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _DeviceWorker:
    def __init__(self, threads: int, cgroup: CpuCgroup | None) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "splitinf.tools.bench.device", "--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=cgroup.join_preexec() if cgroup is not None else None,
        )

    def call(self, op: str, wait_s: float = 600.0, **arguments: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()
        reply: dict[str, Any] = json.loads(_read_line(self.process.stdout, wait_s, f"the device worker ({op})"))
        if not reply.get("ok"):
            raise SplitinfError(f"the device worker failed at {op}: {reply.get('error')}")
        return reply

    def close(self) -> None:
        if self.process.poll() is None and self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.flush()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _run_checked(argv: Sequence[str], what: str) -> None:
    completed = subprocess.run(list(argv), capture_output=True, text=True)
    if completed.returncode != 0:
        raise SplitinfError(f"{what} failed (exit {completed.returncode}): {completed.stderr.strip()[-2000:]}")


# --- the measurements ----------------------------------------------------------------------------------


def _failover_plan(plan_dir: Path, target: Path) -> Path:
    """The plan without the local option, for the failover run: the runtime's policy
    prefers the most accurate option that fits the budget, so with the full model on board it would
    never split, and there would be nothing to fail over from."""
    data = json.loads((plan_dir / "plan.json").read_text())
    data["options"] = [o for o in data["options"] if o["kind"] != "local"]
    target.mkdir(parents=True, exist_ok=True)
    for part in ("device", "server"):
        if not (target / part).exists():  # hard links: the device refuses symlinks leaving its plan directory
            shutil.copytree(plan_dir / part, target / part, copy_function=_link_or_copy)
    (target / "plan.json").write_text(json.dumps(data, indent=2))
    return target


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another filesystem
        shutil.copy2(source, destination)


def _failover_summary(reply: dict[str, Any]) -> dict[str, Any]:
    answers = reply.get("answers", [])
    if reply.get("error"):
        return {"error": reply["error"], "answers": len(answers), "events": reply.get("events", [])}
    cut_at, heal_at = reply["cut_at"], reply["heal_at"]
    first_local = next((a for a in answers if a["end"] > cut_at and a["kind"] != "split"), None)
    first_split = next((a for a in answers if a["end"] > heal_at and a["kind"] == "split"), None)
    outage = [a for a in answers if cut_at < a["end"] <= heal_at]
    return {
        "failover_s": None if first_local is None else first_local["end"] - cut_at,
        "first_local_option": None if first_local is None else first_local["option"],
        "first_local_reason": None if first_local is None else first_local["reason"],
        "recovery_s": None if first_split is None else first_split["end"] - heal_at,
        "outage_s": heal_at - cut_at,
        "outage_answers": len(outage),
        "outage_split_answers": sum(1 for a in outage if a["kind"] == "split"),
        "outage_worst_s": max((a["end"] - a["start"] for a in outage), default=None),
        "answers": len(answers),
        "interval_s": reply.get("interval_s"),
        "events": reply.get("events", []),
    }


def _drive(client: Any, model: str, wire: dict[str, np.ndarray], stop_at: float, latencies: list[float]) -> None:
    while time.perf_counter() < stop_at:
        t0 = time.perf_counter()
        client.infer(model, wire, timeout_s=60.0)
        latencies.append(time.perf_counter() - t0)


def _throughput(address: str, model: str, wire: dict[str, np.ndarray], levels: Sequence[int], seconds: float) -> list:
    from splitinf.edge.client import InferenceClient

    results = []
    for concurrency in levels:
        clients = [InferenceClient(address) for _ in range(concurrency)]
        for client in clients:
            client.infer(model, wire, timeout_s=60.0)  # connect and warm up
        latencies: list[list[float]] = [[] for _ in clients]
        stop_at = time.perf_counter() + seconds

        start = time.perf_counter()
        threads = [
            threading.Thread(target=_drive, args=(client, model, wire, stop_at, out))
            for client, out in zip(clients, latencies, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        for client in clients:
            client.close()
        done = [t for per_client in latencies for t in per_client]
        results.append(
            {
                "concurrency": concurrency,
                "requests": len(done),
                "seconds": elapsed,
                "rps": len(done) / elapsed,
                "median_s": statistics.median(done) if done else None,
            }
        )
    return results


@contextlib.contextmanager
def _cpu_limit(config: BenchConfig, progress: _Progress) -> Iterator[tuple[CpuCgroup | None, dict[str, Any]]]:
    if config.device_cpus is None:
        yield None, {"applied": False, "reason": "--no-cpu-limit: the device process ran without a CPU quota"}
        return
    group = create_cpu_cgroup(config.device_cpus, config.cpu_period_us)
    progress(f"device CPU limit: {group.cpus:g} CPU ({group.quota_us}/{group.period_us} us) in {group.path}")
    info: dict[str, Any] = {"applied": True, **group.describe()}
    try:
        yield group, info
    finally:
        info["cpu_stat"] = group.stats()
        info["removed"] = group.remove()


def _emulation(config: BenchConfig, limit_info: dict[str, Any], hello: dict[str, Any]) -> dict[str, Any]:
    from splitinf.offline.profiling import machine_info

    share = config.device_cpus if config.device_cpus is not None else "an unlimited share"
    return {
        "device": {
            "cpu_limit": limit_info,
            "threads": config.device_threads,
            "process": f"python -m splitinf.tools.bench.device, pid {hello['pid']}",
            "cgroups": hello["cgroups"],
            "emulates": (
                "A Raspberry Pi 4 (4 Cortex-A72 cores, each several times slower than one core here): "
                "what is emulated is the device's compute budget, not its core count. onnxruntime runs "
                f"{config.device_threads} intra-op thread(s) inside {share} of this machine's CPUs; more "
                "threads than the quota's CPUs spin and get throttled in bursts, which inflates p90 and "
                "spoils the profiles."
                + (
                    f" Each profiled and local run starts after {device_pause_s(config) * 1e3:g} ms idle (one quota "
                    "period), as each split request starts after its network call: a quota refills every period."
                    if device_pause_s(config)
                    else ""
                )
            ),
        },
        "server": {
            "process": "python -m splitinf serve (the plan's V2 model repository), loopback",
            "threads": "onnxruntime default intra-op threads",
        },
        "link": {
            "mechanism": "splitinf.tools.faults.FaultProxy, a userspace TCP proxy in the orchestrator between the "
            "device and the server (loopback)",
            "shaping": "token-bucket bandwidth cap in each direction at the grid's rate (1 kbit = 1000 bit; "
            "burst one 1514-byte frame or 4 ms of traffic), RTT/2 added delay in each direction, no jitter, no loss",
        },
        "machine": machine_info(),
    }


def _make_plan(
    config: BenchConfig,
    prepared: _Prepared,
    cut_ids: Sequence[str],
    device: _DeviceWorker,
    progress: _Progress,
    work: Path,
) -> Any:
    """Device profile inside the limited process, server profile unlimited, then ``splitinf plan``."""
    from splitinf.contract.plan import load_plan

    progress("device profile (inside the CPU-limited process)")
    device_profile, server_profile, plan_dir = work / "device_profile.json", work / "server_profile.json", work / "plan"
    device.call(
        "profile",
        wait_s=3600,
        model=str(prepared.path),
        fallback=str(prepared.fallback) if prepared.fallback else None,
        cuts=list(cut_ids),
        codecs=list(config.codecs),
        samples=str(prepared.profile_inputs),
        repeats=config.profile_repeats,
        warmup=config.profile_warmup,
        pause_s=device_pause_s(config),
        output=str(device_profile),
        progress=config.progress,
    )
    progress("server profile (unlimited process, as the server runs)")
    _run_checked(
        _python(
            "splitinf", "profile", str(prepared.path), "-o", str(server_profile), "--threads", "0",
            "--cuts", ",".join(cut_ids), "--codecs", ",".join(config.codecs),
            "--samples", str(prepared.profile_inputs),
            "--repeats", str(config.profile_repeats), "--warmup", str(config.profile_warmup),
        ),
        "the server profile",
    )  # fmt: skip
    progress("planning (splitinf plan --hold-all with both profiles)")
    _run_checked(_plan_argv(config, prepared, device_profile, server_profile, plan_dir), "splitinf plan")
    return load_plan(plan_dir, check_files=("device", "server"))


def _plan_argv(
    config: BenchConfig, prepared: _Prepared, device_profile: Path, server_profile: Path, plan_dir: Path
) -> list[str]:
    argv = _python(
        "splitinf", "plan", str(prepared.path), "--device", str(device_profile), "--server", str(server_profile),
        "--calibration", str(prepared.calibration), "--codecs", ",".join(config.codecs),
        "--budget-ms", f"{config.budget_s * 1e3:g}",
        "--reference-rtt", f"{config.rtts_ms[0]:g}", "--hold-all", "-o", str(plan_dir),
    )  # fmt: skip
    return argv + (["--fallback", str(prepared.fallback)] if prepared.fallback is not None else [])


def _replan_live(
    config: BenchConfig, prepared: _Prepared, plan: Any, server_address: str, work: Path, progress: _Progress
) -> tuple[Any, str]:
    """The plan again, with the tails' times as the running server measures them (``splitinf profile PLAN
    --server``: its warm-up runs and requests, with the serving settings and process) instead of the offline
    server profile's; and a note saying which the bench's predictions use."""
    from splitinf.contract.plan import load_plan

    progress("server profile from the running tail server (splitinf profile PLAN --server)")
    live_profile, live_dir = work / "server_profile_live.json", work / "plan-live"
    _run_checked(
        _python("splitinf", "profile", str(plan.root), "--server", server_address,
                "--base", str(work / "server_profile.json"), "-o", str(live_profile)),
        "the live server profile",
    )  # fmt: skip
    progress("planning again with the running server's tail times")
    _run_checked(_plan_argv(config, prepared, work / "device_profile.json", live_profile, live_dir), "splitinf plan")
    live = load_plan(live_dir, check_files=("device", "server"))
    served = {o.id: o.tail_model for o in plan.split_options}
    if {o.id: o.tail_model for o in live.split_options} != served:
        return plan, "The live re-plan held other tails than the server serves; predictions use the offline profile."
    return live, (
        "Tail times: as the running server measured them (`splitinf profile PLAN --server`, the plan made again "
        "with that profile); the offline server profile is kept in work/server_profile.json."
    )


@dataclass
class _Measurements:
    """The measuring stages, sharing the running device worker, plan, server and link."""

    config: BenchConfig
    progress: _Progress
    prepared: _Prepared
    device: _DeviceWorker
    plan: Any
    input_cut: str
    server_address: str
    proxy: Any

    @property
    def splits(self) -> list[Any]:
        return list(self.plan.split_options)

    @property
    def full_offload(self) -> list[str]:
        return [o.id for o in self.splits if o.cut_id == self.input_cut]

    def _shape(self, bandwidth_mbit: float, rtt_ms: float) -> None:
        from splitinf.tools.faults import FaultSettings

        self.proxy.set(FaultSettings.make(latency_ms=rtt_ms / 2, rate_kbit=bandwidth_mbit * 1000))

    def _option_spec(self, option: Any) -> dict[str, Any]:
        return {
            "id": option.id,
            "head": [str(self.plan.path(f)) for f in option.head],
            "tail_model": option.tail_model,
            "tail_version": option.tail_version,
            "wire": [t.name for t in option.wire],
        }

    def local(self) -> dict[str, Any] | None:
        local = self.plan.local
        if local is None:
            return None
        self.progress(f"local model on the device ({self.config.requests} runs)")
        reply = self.device.call(
            "local",
            model=[str(self.plan.path(f)) for f in local.model],
            inputs=str(self.prepared.inputs),
            requests=self.config.requests,
            warmup=self.config.warmup,
            max_s=self.config.max_cell_s,
            pause_s=device_pause_s(self.config),
        )
        return {"stats": summarise(reply["samples"]), "predicted_s": local.seconds}

    def grid(self, local_stats: dict[str, Any] | None) -> list[dict[str, Any]]:
        from splitinf.contract.plan import expected_latency

        config, splits, local = self.config, self.splits, self.plan.local
        grid: list[dict[str, Any]] = []
        cells = [(bw, rtt) for bw in sorted(config.bandwidths_mbit) for rtt in sorted(config.rtts_ms)]
        for index, (bw, rtt) in enumerate(cells, start=1):
            bps, rtt_s = bw * 1e6, rtt * 1e-3
            self._shape(bw, rtt)
            predicted = {o.id: expected_latency(o, bps, rtt_s) for o in splits}
            best_predicted = min([*predicted.values(), *([local.seconds] if local else [])])
            measure = [
                o for o in splits
                if not (predicted[o.id] > config.skip_factor * best_predicted and predicted[o.id] > config.skip_min_s)
            ]  # fmt: skip
            self.progress(f"[{index}/{len(cells)}] {bw:g} Mbit/s, RTT {rtt:g} ms: {len(measure)} options")
            reply = self.device.call(
                "measure",
                target=self.proxy.address,
                inputs=str(self.prepared.inputs),
                requests=config.requests,
                warmup=config.warmup,
                max_s=config.max_cell_s,
                timeout_s=max(30.0, 3 * max((predicted[o.id] for o in measure), default=1.0)),
                options=[self._option_spec(o) for o in measure],
            )
            options: dict[str, Any] = {}
            for o in splits:
                measured = reply["options"].get(o.id)
                options[o.id] = {
                    "predicted_s": predicted[o.id],
                    "stats": summarise(measured["samples"]) if measured else None,
                    "errors": measured["errors"] if measured else [],
                    "skipped": None if measured else "predicted far slower than the best option here",
                }
            planned = self.plan.planned(bps, rtt_s)
            planned_id, planned_predicted = (planned[0].id, planned[1]) if planned else (None, None)
            summary = summarise_cell(options, local_stats, planned_id=planned_id, full_offload_ids=self.full_offload)
            grid.append(
                {
                    "bandwidth_mbit": bw,
                    "rtt_ms": rtt,
                    "options": options,
                    "planned_option": planned_id,
                    "planned_predicted_s": planned_predicted,
                    "summary": summary,
                }
            )
        self.proxy.clear()
        return grid

    def overhead(self, echo_address: str) -> list[dict[str, Any]]:
        """The largest and the smallest request against a bare echo of the same bytes."""
        self.progress("framework overhead against a bare gRPC echo")
        by_bytes = sorted(self.splits, key=lambda o: o.wire_bytes)
        cases = list(dict.fromkeys([by_bytes[-1].id, by_bytes[0].id]))
        reply = self.device.call(
            "overhead",
            target=self.server_address,
            echo_target=echo_address,
            inputs=str(self.prepared.inputs),
            requests=max(10, 2 * self.config.requests),
            cases=[self._option_spec(self.plan.option(i)) for i in cases],
        )
        rows = []
        for case in reply["cases"]:
            v2, echo = statistics.median(case["v2_s"]), statistics.median(case["echo_s"])
            rows.append(
                {
                    "id": case["id"],
                    "request_bytes": case["request_bytes"],
                    "response_bytes": case["response_bytes"],
                    "v2_median_s": v2,
                    "echo_median_s": echo,
                    "overhead_s": v2 - echo,
                    "ratio": v2 / max(echo, 1e-9),
                    "v2_s": case["v2_s"],
                    "echo_s": case["echo_s"],
                }
            )
        return rows

    def failover(self, grid: Sequence[dict[str, Any]], work: Path) -> dict[str, Any]:
        """Cut the link under a real Runtime at the fastest point, heal it, time both transitions."""
        from splitinf.edge.policy import PolicyConfig

        config = self.config
        bw, rtt = max(config.bandwidths_mbit), min(config.rtts_ms)
        cell = next(c for c in grid if c["bandwidth_mbit"] == bw and c["rtt_ms"] == rtt)
        fastest = min((c["stats"]["median_s"] for c in cell["options"].values() if c.get("stats")), default=0.05)
        # The bench's budget, or 4x the fastest split measured here when that is more: a budget
        # near the split latency would trip on the estimator's cold start, not on the cut.
        budget = max(config.budget_s, 4 * fastest, 4 * min(predicted_at(o, bw, rtt) for o in self.splits))
        self.progress(f"failover and recovery at {bw:g} Mbit/s, RTT {rtt:g} ms (budget {budget * 1e3:.0f} ms)")
        self._shape(bw, rtt)
        reply = self.device.call(
            "failover",
            wait_s=600,
            plan=str(_failover_plan(Path(str(self.plan.root)), work / "failover_plan")),
            target=self.proxy.address,
            control=f"127.0.0.1:{self.proxy.control_port}",
            inputs=str(self.prepared.inputs),
            budget_s=budget,
            prior_rtt_s=rtt * 1e-3,
            prior_bandwidth_bps=bw * 1e6,
            policy=config.policy,
            outage_s=config.outage_s,
        )
        self.proxy.clear()
        policy = dataclasses.asdict(PolicyConfig(budget_s=budget, **config.policy))
        summary = _failover_summary(reply)
        summary.update(
            bandwidth_mbit=bw,
            rtt_ms=rtt,
            budget_s=budget,
            cut="a black hole both ways (FaultProxy blackhole: bytes accepted and dropped, nothing refused)",
            policy=", ".join(f"{k}={v:g}" for k, v in policy.items()),
        )
        return summary

    def throughput(self) -> dict[str, Any]:
        """Concurrent clients straight to the server with the full-offload fp32 request (the whole model)."""
        from splitinf.offline.sessions import make_session
        from splitinf.ort import Chain

        self.progress("tail-server throughput")
        offload = [o for o in self.splits if o.cut_id == self.input_cut]
        option = next((o for o in offload if o.codec == "fp32"), offload[0] if offload else self.splits[0])
        head = Chain(option.id, [make_session(str(self.plan.path(f)), 1) for f in option.head], option.head)
        feed = self.prepared.feeds()
        values = head.run(feed)
        wire = {name: values[name] for name in [t.name for t in option.wire] or head.output_names}
        levels = _throughput(
            self.server_address, option.tail_model or "", wire, self.config.concurrency, self.config.throughput_s
        )
        return {"option": option.id, "request_bytes": int(sum(v.nbytes for v in wire.values())), "levels": levels}


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Run the whole benchmark; write bench.json, bench.md and bench.svg into ``config.out``."""
    from splitinf.contract.files import sha256_file, write_json_atomic
    from splitinf.errors import OutputError
    from splitinf.offline.graph import GraphView, load_model
    from splitinf.tools.faults import FaultProxy

    if config.link != "proxy":
        raise UsageError(
            f"--link {config.link} is not supported by this harness yet; use --link proxy "
            "(the emulated link is splitinf.tools.faults.FaultProxy)"
        )
    if not config.bandwidths_mbit or not config.rtts_ms:
        raise UsageError("give at least one bandwidth and one RTT")
    progress = _Progress(config.progress)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out, work = config.out, config.out / "work"
    try:
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
    except OSError as exc:
        raise OutputError(f"cannot write in {out}: {exc.strerror or exc}; choose a writable --out") from exc

    progress(f"preparing {config.model}")
    prepared = _prepare_model(config, work)
    # the cuts at the measured input's shapes, as the profiles enumerate them (ids differ with shapes)
    view = GraphView(load_model(prepared.path), prepared.feeds())
    cuts = view.cuts()
    if config.cuts:
        cut_ids = list(dict.fromkeys([cuts[0].id] + [view.find(c).id for c in config.cuts]))
    else:
        cut_ids = choose_cuts(cuts, config.max_cuts)
    progress(f"candidate cuts: {', '.join(cut_ids)}")
    notes: list[str] = []
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out", "command", "progress")}
    settings["skip_rule"] = (
        f"an option is not measured at a grid point when its predicted latency exceeds both "
        f"{config.skip_factor:g}x the best prediction there and {config.skip_min_s:g} s; each option gets "
        f"{config.requests} requests (after {config.warmup} warm-up), the options interleaved (one request each "
        f"per round, in a shuffled order), fewer rounds (at least 3) once {config.max_cell_s:g} s per option are spent"
    )
    results: dict[str, Any] = {
        "format": 1,
        "kind": "splitinf-bench",
        "command": config.command,
        "started_utc": started,
        "model": {
            "name": prepared.name,
            "path": str(prepared.path),
            "sha256": sha256_file(prepared.path),
            "description": prepared.description,
            "fallback": str(prepared.fallback) if prepared.fallback else None,
            "candidate_cuts": cut_ids,
        },
        "settings": settings,
        "notes": notes,
    }

    with contextlib.ExitStack() as stack:
        group, limit_info = stack.enter_context(_cpu_limit(config, progress))
        if group is None:
            notes.append("The device ran WITHOUT a CPU limit (--no-cpu-limit): device figures are this machine's.")
        device = _DeviceWorker(config.device_threads, group)
        stack.callback(device.close)
        hello = device.call("hello", wait_s=120)
        if group is not None and not any(group.path.name in line for line in hello["cgroups"]):
            raise SplitinfError(f"the device worker is not in {group.path}: {hello['cgroups']}")
        results["emulation"] = _emulation(config, limit_info, hello)

        plan = _make_plan(config, prepared, cut_ids, device, progress, work)
        results["plan"] = {
            "dir": str(plan.root),
            "options": _plan_options(plan),
            "full_offload": [o.id for o in plan.split_options if o.cut_id == cuts[0].id],
        }
        results["profiles"] = {
            side: {"path": str(work / f"{side}_profile.json"), "model_seconds": summary.get("model_seconds")}
            for side, summary in plan.profiles.items()
            if side in ("device", "server")
        }
        notes.extend(f"Plan note: {n}" for n in plan.profiles.get("evaluated", {}).get("notes", []))
        notes.append(
            "Candidates measured: every profiled (cut, codec) option within the planner's accuracy floor (the "
            "plan is made with --hold-all, so each has its head and tail) and the local model. The planned option is "
            "the device's rule over all of them (splitinf.contract.plan.choose_option) within the plan's budget."
        )

        progress("starting the tail server and the emulated link")
        server, server_address = _start_subprocess(
            _python("splitinf", "serve", "--repo", str(plan.root / "server"), "--host", "127.0.0.1", "--port", "0",
                    "--metrics-port", "-1"),
            "serving on ",
            "the tail server",
        )  # fmt: skip
        stack.callback(_stop, server)
        proxy = FaultProxy(server_address, control_port=0).start()
        stack.callback(proxy.stop)
        results["emulation"]["server"]["address"] = server_address
        results["emulation"]["link"]["proxy"] = proxy.address
        if config.server_live:
            plan, note = _replan_live(config, prepared, plan, server_address, work, progress)
            notes.append(note)
            results["plan"]["live_dir"] = str(plan.root)
            results["plan"]["options"] = _plan_options(plan)
        measure = _Measurements(config, progress, prepared, device, plan, cuts[0].id, server_address, proxy)

        local = measure.local()
        if local is not None:
            results["local"] = local
            notes.append("The local model is measured once (it does not touch the link) and stands at every point.")
        results["grid"] = measure.grid(local["stats"] if local else None)
        echo, echo_address = _start_subprocess(_python("splitinf.tools.bench.echo"), "echo on ", "the echo server")
        stack.callback(_stop, echo)
        results["overhead"] = measure.overhead(echo_address)
        if config.failover and plan.fallback is not None:
            results["failover"] = measure.failover(results["grid"], work)
        elif config.failover:
            notes.append("Failover not measured: the model has no fallback (give --fallback).")
        results["throughput"] = measure.throughput()

    results["accuracy"] = model_accuracy(results["grid"], results.get("local"))
    results["wall_s"] = progress.elapsed
    write_json_atomic(out / "bench.json", results)
    (out / "bench.md").write_text(bench_markdown(results))
    (out / "bench.svg").write_text(bench_svg(results))
    progress(f"wrote {out / 'bench.md'}, {out / 'bench.json'}, {out / 'bench.svg'}")
    return results


def _plan_options(plan: Any) -> list[dict[str, Any]]:
    return [
        {
            "id": o.id,
            "kind": o.kind,
            "codec": o.codec,
            "bytes": o.wire_bytes,
            "head_s": o.head_seconds,
            "tail_s": o.tail_seconds,
            "seconds": o.seconds,
            "accuracy": o.accuracy,
        }
        for o in plan.options
    ]


def predicted_at(option: Any, bandwidth_mbit: float, rtt_ms: float) -> float:
    from splitinf.contract.plan import expected_latency

    return expected_latency(option, bandwidth_mbit * 1e6, rtt_ms * 1e-3)


def command_line(argv: Sequence[str]) -> str:
    """The command as a user would type it; ``argv`` starts at the subcommand (``["bench", ...]``)."""
    return "splitinf " + shlex.join(argv)
