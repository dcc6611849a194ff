"""``splitinf demo``: the whole system on loopback, in about a minute.

It partitions the shipped digits model, profiles and plans its cuts, starts a
tail server on a free loopback port, and runs the device runtime over the
held-out digits through a fault proxy whose link goes healthy -> severed ->
healed. Per phase it reports accuracy, latency, where answers came from and the
mode changes. Everything it writes lives in one temporary directory, removed at
the end; everything it starts is stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from splitinf.contract.stats import quantile
from splitinf.errors import UsageError

__all__ = ["DemoSettings", "PhaseReport", "run_demo"]

PHASES = ("healthy", "severed", "healed")


@dataclass(frozen=True)
class DemoSettings:
    phase_seconds: tuple[float, float, float] = (10.0, 12.0, 20.0)
    rate_per_s: float = 25.0  # requests per second, like a camera at 25 frames per second
    budget_s: float = 0.1
    calibration_samples: int = 60  # the first held-out digits calibrate the codecs; the rest are the stream
    # Short policy periods so a heal shows within the demo (a Pi would use the defaults).
    open_s: float = 2.0
    stabilisation_s: float = 3.0
    min_dwell_s: float = 2.0
    probe_interval_s: float = 0.5

    def __post_init__(self) -> None:
        if len(self.phase_seconds) != 3 or any(s <= 0 for s in self.phase_seconds):
            raise UsageError("--phase-seconds takes three durations > 0: healthy,severed,healed (e.g. 10,12,20)")
        if self.rate_per_s <= 0:
            raise UsageError(f"--rate must be > 0 requests per second, got {self.rate_per_s:g}")
        if self.budget_s <= 0:
            raise UsageError(f"--budget-ms must be > 0, got {self.budget_s * 1000:g}")


@dataclass
class PhaseReport:
    name: str
    seconds: float
    requests: int = 0
    correct: int = 0
    latencies_s: list[float] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)
    fallback_reasons: dict[str, int] = field(default_factory=dict)
    mode_changes: list[tuple[float, str, str, str]] = field(default_factory=list)  # (t, from, to, reason)
    mode_at_end: str = ""

    @property
    def accuracy(self) -> float:
        return self.correct / self.requests if self.requests else float("nan")

    def quantile_ms(self, fraction: float) -> float:
        return quantile(self.latencies_s, fraction) * 1000 if self.latencies_s else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "seconds": self.seconds,
            "requests": self.requests,
            "accuracy": self.accuracy,
            "p50_ms": self.quantile_ms(0.5),
            "p99_ms": self.quantile_ms(0.99),
            "max_ms": max(self.latencies_s, default=0.0) * 1000,
            "answers": dict(self.by_kind),
            "fallback_reasons": dict(self.fallback_reasons),
            "mode_changes": [
                {"at_s": round(t, 3), "from": old, "to": new, "reason": why} for t, old, new, why in self.mode_changes
            ],
            "mode_at_end": self.mode_at_end,
        }


def _say(out: TextIO, text: str) -> None:
    print(text, file=out, flush=True)


def _make_plan(workdir: Path, settings: DemoSettings, out: TextIO) -> tuple[Path, int]:
    """Profile and plan the shipped model; the device and the server are this machine."""
    from splitinf.offline.planner import plan_model
    from splitinf.offline.profiling import profile_file
    from splitinf.tools.models import DIGITS_INPUT, digits_fallback_path, digits_main_path, load_digits_test

    images, labels = load_digits_test()
    n_cal = settings.calibration_samples
    calibration = workdir / "calibration.npz"
    arrays: dict[str, Any] = {DIGITS_INPUT: images[:n_cal], "labels": labels[:n_cal]}
    np.savez(calibration, **arrays)
    profile = workdir / "profile.json"
    _say(out, "  profiling every cut's head and tail with onnxruntime (device and server are this machine)")
    profile_file(digits_main_path(), profile, fallback=digits_fallback_path(), repeats=10)
    plan_dir = workdir / "plan"
    plan_model(
        digits_main_path(),
        device_profile=profile,
        server_profile=profile,
        fallback=digits_fallback_path(),
        calibration=calibration,
        output=plan_dir,
        budget_s=settings.budget_s,
        # The demo pretends the main model does not fit on the device, so it splits or falls back.
        include_local=False,
    )
    return plan_dir, n_cal


@contextlib.contextmanager
def _running(start: Callable[[], Any], stop: Callable[[Any], None]) -> Iterator[Any]:
    thing = start()
    try:
        yield thing
    finally:
        stop(thing)


def run_demo(settings: DemoSettings = DemoSettings(), out: TextIO = sys.stdout) -> list[PhaseReport]:
    from splitinf.cloud.app import create_server
    from splitinf.cloud.config import ServerConfig
    from splitinf.contract.plan import load_plan
    from splitinf.edge.config import DeviceConfig
    from splitinf.edge.runtime import Runtime
    from splitinf.tools.faults import FaultProxy
    from splitinf.tools.models import DIGITS_INPUT, DIGITS_OUTPUT, load_digits_test

    with tempfile.TemporaryDirectory(prefix="splitinf-demo-") as tmp:
        workdir = Path(tmp)
        _say(out, f"[1/4] planning the shipped digits model (files in {workdir}, removed at the end)")
        plan_dir, n_cal = _make_plan(workdir, settings, out)
        plan = load_plan(plan_dir)
        held = ", ".join(f"{o.id} ({o.wire_bytes} B, accuracy {o.accuracy:.1%})" for o in plan.split_options)
        fallback = plan.fallback
        _say(out, f"  plan holds: {held}")
        if fallback is not None and fallback.accuracy is not None:
            _say(out, f"  fallback model on the device: accuracy {fallback.accuracy:.1%}")

        _say(out, "[2/4] starting the tail server on loopback")
        config = ServerConfig(repo=plan_dir / "server", host="127.0.0.1", port=0, metrics_port=0, drain_grace_s=2.0)
        with (
            _running(lambda: create_server(config)[0], lambda s: s.stop(grace=1.0)) as server,
            _running(lambda: FaultProxy(f"127.0.0.1:{server.port}").start(), lambda p: p.stop()) as proxy,
        ):
            _say(out, f"  tail server 127.0.0.1:{server.port}; device talks through fault proxy {proxy.address}")
            device_config = DeviceConfig(server=proxy.address, budget_s=settings.budget_s, metrics_port=0)
            device_config = dataclasses.replace(
                device_config,
                policy=dataclasses.replace(
                    device_config.policy,
                    open_s=settings.open_s,
                    stabilisation_s=settings.stabilisation_s,
                    min_dwell_s=settings.min_dwell_s,
                    probe_interval_s=settings.probe_interval_s,
                ),
                light_probe_interval_s=settings.probe_interval_s,
            )
            _say(out, "[3/4] starting the device runtime (heads and fallback loaded and warm)")
            with Runtime(plan_dir, device_config) as runtime:
                device_metrics_port = runtime.start_metrics_server(0)
                images, labels = load_digits_test()
                stream_x, stream_y = images[n_cal:], labels[n_cal:]
                _say(out, "[4/4] streaming held-out digits: healthy -> severed -> healed")
                reports = _run_phases(runtime, proxy, stream_x, stream_y, settings, DIGITS_INPUT, DIGITS_OUTPUT, out)
                _print_summary(reports, out)
                _say(
                    out,
                    f"metrics: device http://127.0.0.1:{device_metrics_port}/metrics, "
                    f"server http://127.0.0.1:{server.metrics_port}/metrics (stopped when the demo ends)",
                )
    _say(out, "stopped the device runtime, the fault proxy and the tail server; removed the temporary files")
    return reports


def _run_phases(
    runtime: Any,
    proxy: Any,
    images: np.ndarray,
    labels: np.ndarray,
    settings: DemoSettings,
    input_name: str,
    output_name: str,
    out: TextIO,
) -> list[PhaseReport]:
    reports = []
    interval = 1.0 / settings.rate_per_s
    demo_start = time.monotonic()
    index = 0
    seen_events = len(runtime.events)
    for name, seconds in zip(PHASES, settings.phase_seconds, strict=True):
        if name == "severed":
            proxy.set(blackhole=True)  # packets vanish, nothing is refused: the hardest failure to notice
        elif name == "healed":
            proxy.clear()
        report = PhaseReport(name=name, seconds=seconds)
        phase_end = time.monotonic() + seconds
        next_send = time.monotonic()
        while time.monotonic() < phase_end:
            i = index % len(images)
            index += 1
            result = runtime.infer({input_name: images[i : i + 1]})
            report.requests += 1
            report.correct += int(np.argmax(result.outputs[output_name][0]) == labels[i])
            report.latencies_s.append(result.latency.total_s)
            report.by_kind[result.kind] = report.by_kind.get(result.kind, 0) + 1
            if result.fallback_reason:
                report.fallback_reasons[result.fallback_reason] = (
                    report.fallback_reasons.get(result.fallback_reason, 0) + 1
                )
            events = runtime.events
            for event in events[seen_events:]:
                if event.kind == "mode":
                    t = time.monotonic() - demo_start
                    report.mode_changes.append((t, event.old, event.new, event.reason))
                    _say(out, f"  t={t:6.2f}s  mode {event.old} -> {event.new}  ({event.reason})")
            seen_events = len(events)
            next_send += interval
            delay = next_send - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the request stream, like a camera's frame rate
        report.mode_at_end = runtime.mode.value
        reports.append(report)
        _say(
            out,
            f"  {name:8s} {report.requests:4d} requests  accuracy {report.accuracy:6.1%}  "
            f"split {report.by_kind.get('split', 0):4d}  fallback {report.by_kind.get('fallback', 0):4d}",
        )
    return reports


def _print_summary(reports: Sequence[PhaseReport], out: TextIO) -> None:
    _say(out, "")
    _say(out, "phase     requests  accuracy   p50 ms   p99 ms  split  fallback  mode changes")
    for r in reports:
        changes = ", ".join(f"{old}->{new}@{t:.1f}s" for t, old, new, _ in r.mode_changes) or "-"
        _say(
            out,
            f"{r.name:9s} {r.requests:8d} {r.accuracy:9.1%} {r.quantile_ms(0.5):8.2f} {r.quantile_ms(0.99):8.2f} "
            f"{r.by_kind.get('split', 0):6d} {r.by_kind.get('fallback', 0):9d}  {changes}",
        )
    _say(out, "")
