"""Chaos scenario 10, the soak: repeated outages of every kind for a few minutes.

A real device runtime under steady load (two threads, 20 ms apart) against a real tail
server through a FaultProxy, while a cycle of outages repeats: black hole, paused link
(cable pulled), resets, latency beyond the budget, a bandwidth collapse, the server killed
and restarted, each followed by a healthy spell. Every answer is checked as it arrives
(exactly once, the outputs of the model its label names, within budget + fallback run time
+ margin) and only counters are kept, so the process's own bookkeeping cannot look like a
leak. RSS and the thread count are sampled once per cycle.

    python benchmarks/soak_chaos.py --duration 180        # a few minutes; exit 1 on a violation

Prints the worst-case latency per path, fallbacks by reason, mode changes, and the memory
series; with --json PATH also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "tools" / "chaos"))

from chaos_harness import (
    MARGIN_S,
    ChaosPlan,
    TailProcess,
    build_chaos_plan,
    device_config,
    device_threads,
    rss_bytes,
    sample_input,
)

from splitinf.contract.stats import quantile
from splitinf.edge.runtime import Runtime
from splitinf.tools.faults import FaultProxy, FaultSettings

BUDGET_S = 0.3
# Long enough to recover: open period (<= 1 s) + stabilisation + dwell + capped reconnect backoff.
HEALTHY_S = 3.0
OUTAGES: list[tuple[str, float, FaultSettings | None]] = [
    ("blackhole", 1.0, FaultSettings.make(blackhole=True)),
    ("pause", 1.0, FaultSettings.make(pause=True)),
    ("reset", 0.5, FaultSettings(reset=True)),
    ("latency", 1.0, FaultSettings.make(latency_ms=250)),
    ("bandwidth", 1.5, FaultSettings.make(rate_kbit=500)),
    ("server_restart", 1.0, None),  # None: kill the server, restart it on its port after the spell
]


@dataclass
class SoakStats:
    """Counters only: a fixed-size record however long the soak runs."""

    bound_s: float
    answered: bytearray = field(default_factory=lambda: bytearray(1 << 20))
    issued: int = 0
    by_path: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    worst_s: dict[str, float] = field(default_factory=dict)
    late: list[tuple[int, float, str]] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    recent_s: list[float] = field(default_factory=list)  # reservoir for percentiles (bounded)

    def record(self, index: int, kind: str, option: str, total_s: float, reason: str | None) -> None:
        self.answered[index] += 1
        self.by_path[f"{kind}:{option}"] += 1
        if reason:
            self.by_reason[reason] += 1
        self.worst_s[kind] = max(self.worst_s.get(kind, 0.0), total_s)
        if total_s > self.bound_s and len(self.late) < 50:
            self.late.append((index, total_s, kind))
        if len(self.recent_s) < 20000:
            self.recent_s.append(total_s)
        else:
            self.recent_s[index % 20000] = total_s


@dataclass
class CycleLog:
    """What the outage loop observed: per-cycle samples and whether split mode came back after each outage."""

    started: float
    cycles: int = 0
    rss_mib: list[float] = field(default_factory=list)
    thread_counts: list[int] = field(default_factory=list)
    recovered: list[tuple[str, bool]] = field(default_factory=list)


def start_load(
    runtime: Runtime, plan: ChaosPlan, stats: SoakStats, lock: threading.Lock, stop: threading.Event
) -> list[threading.Thread]:
    """Two threads sending requests 20 ms apart until stop is set, each answer checked as it arrives."""

    def load() -> None:
        while not stop.is_set():
            with lock:
                index = stats.issued
                stats.issued += 1
            result = runtime.infer({"x": sample_input(index)}, budget_s=BUDGET_S)
            expected = plan.expected(result.kind, sample_input(index))
            with lock:
                if not np.allclose(result.outputs["y"], expected, rtol=1e-4, atol=1e-5):
                    stats.wrong.append(f"request {index}: not {result.kind}'s answer to its input")
                stats.record(index, result.kind, result.option_id, result.latency.total_s, result.fallback_reason)
            stop.wait(0.02)

    workers = [threading.Thread(target=load, name=f"soak-load-{i}") for i in range(2)]
    for worker in workers:
        worker.start()
    return workers


def split_answers(stats: SoakStats, lock: threading.Lock) -> int:
    with lock:
        return sum(v for k, v in stats.by_path.items() if k.startswith("split:"))


def run_outage(
    settings: FaultSettings | None,
    spell_s: float,
    tail: TailProcess,
    proxy: FaultProxy,
    stats: SoakStats,
    lock: threading.Lock,
    pacer: threading.Event,
) -> bool:
    """One outage then a healthy spell; True if split answers came back during the healthy spell."""
    if settings is None:
        tail.kill()
    else:
        proxy.set(settings)
    pacer.wait(spell_s)
    if settings is None:
        tail.start()
    proxy.clear()
    splits_before = split_answers(stats, lock)
    pacer.wait(HEALTHY_S)
    return split_answers(stats, lock) > splits_before


def run_outage_cycles(
    duration_s: float,
    runtime: Runtime,
    tail: TailProcess,
    proxy: FaultProxy,
    stats: SoakStats,
    lock: threading.Lock,
    pacer: threading.Event,
    log: CycleLog,
    *,
    verbose: bool,
) -> None:
    while time.monotonic() - log.started < duration_s:
        for name, spell_s, settings in OUTAGES:
            log.recovered.append((name, run_outage(settings, spell_s, tail, proxy, stats, lock, pacer)))
            if verbose:
                elapsed = time.monotonic() - log.started
                print(f"  {elapsed:6.1f}s {name:15s} answered {stats.issued:6d} mode {runtime.mode.value}")
            if time.monotonic() - log.started >= duration_s:
                break
        log.cycles += 1
        log.rss_mib.append(rss_bytes() / 2**20)
        log.thread_counts.append(len(device_threads()))


def threads_left_behind(threads_before: set[threading.Thread], pacer: threading.Event) -> list[str]:
    """Names of device threads started during the soak still alive after up to 10 s of waiting."""
    deadline = time.monotonic() + 10
    while device_threads() - threads_before and time.monotonic() < deadline:
        pacer.wait(0.05)
    return sorted(t.name for t in device_threads() - threads_before)


def mode_transitions(runtime: Runtime) -> Counter[str]:
    return Counter(
        f"{s.labels['from_mode']}->{s.labels['to_mode']}"
        for m in runtime.metrics.registry.collect()
        for s in m.samples
        if s.name == "splitinf_device_mode_transitions_total"
        for _ in range(int(s.value))
    )


def build_report(
    duration_s: float,
    stats: SoakStats,
    log: CycleLog,
    transitions: Counter[str],
    leaked: list[str],
    stuck: list[str],
) -> dict[str, Any]:
    answered = stats.answered[: stats.issued]
    rss_mib = log.rss_mib
    third = max(1, len(rss_mib) // 3)
    return {
        "command": f"python benchmarks/soak_chaos.py --duration {duration_s:g}",
        "duration_s": round(time.monotonic() - log.started, 1),
        "cycles": log.cycles,
        "budget_s": BUDGET_S,
        "bound_s": round(stats.bound_s, 4),
        "requests": stats.issued,
        "answered_exactly_once": answered.count(1) == stats.issued,
        "by_path": dict(stats.by_path),
        "fallbacks_by_reason": dict(stats.by_reason),
        "worst_case_s": {k: round(v, 4) for k, v in stats.worst_s.items()},
        "p50_s": round(statistics.median(stats.recent_s), 4) if stats.recent_s else None,
        "p99_s": round(quantile(stats.recent_s, 0.99), 4) if stats.recent_s else None,
        "late": stats.late,
        "wrong_outputs": stats.wrong[:10],
        "mode_transitions": dict(transitions),
        "rss_mib_per_cycle": [round(v, 1) for v in rss_mib],
        "rss_growth_mib": round(statistics.median(rss_mib[-third:]) - statistics.median(rss_mib[:third]), 1)
        if len(rss_mib) >= 2
        else 0.0,
        "outages": len(log.recovered),
        "outages_not_recovered": [name for name, ok in log.recovered if not ok],
        "threads_per_cycle": log.thread_counts,
        "leaked_threads": leaked,
        "stuck_workers": stuck,
    }


def find_problems(report: dict[str, Any], stats: SoakStats) -> list[str]:
    problems = []
    if not report["answered_exactly_once"]:
        problems.append("some request was not answered exactly once")
    if stats.late:
        problems.append(f"{len(stats.late)}+ answers later than {stats.bound_s:.3f}s")
    if stats.wrong:
        problems.append(f"{len(stats.wrong)} answers with outputs that are not their label's")
    if report["rss_growth_mib"] > 16:
        problems.append(f"RSS grew {report['rss_growth_mib']} MiB between the first and last third")
    thread_counts = report["threads_per_cycle"]
    if len(set(thread_counts)) > 1 and max(thread_counts) - min(thread_counts) > 2:
        problems.append(f"thread count varied across cycles: {thread_counts}")
    if report["outages_not_recovered"]:
        problems.append(f"no split answer in the healthy spell after {report['outages_not_recovered']}")
    leaked, stuck = report["leaked_threads"], report["stuck_workers"]
    if leaked or stuck:
        problems.append(f"leaked threads {leaked}, stuck workers {stuck}")
    return problems


def run_soak(duration_s: float, workdir: Path, *, verbose: bool = True) -> dict[str, Any]:
    plan: ChaosPlan = build_chaos_plan(workdir)
    tail = TailProcess(plan.server_repo)
    proxy = FaultProxy(("127.0.0.1", tail.port)).start()
    threads_before = device_threads()
    # flap limit lifted so that every healthy spell has to bring split mode back (scenario 7 tests the limit)
    runtime = Runtime(plan.path, device_config(proxy.address, budget_s=BUDGET_S, policy={"flap_limit": 10_000}))
    stats = SoakStats(bound_s=BUDGET_S + plan.fallback_s + MARGIN_S)
    lock = threading.Lock()
    stop = threading.Event()
    workers = start_load(runtime, plan, stats, lock, stop)
    log = CycleLog(started=time.monotonic())
    pacer = threading.Event()
    try:
        run_outage_cycles(duration_s, runtime, tail, proxy, stats, lock, pacer, log, verbose=verbose)
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
        stuck = [w.name for w in workers if w.is_alive()]
        runtime.close()
        proxy.stop()
        tail.kill()
    leaked = threads_left_behind(threads_before, pacer)
    report = build_report(duration_s, stats, log, mode_transitions(runtime), leaked, stuck)
    report["problems"] = find_problems(report, stats)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of repeated outages (default 180)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    print(f"soak: {args.duration:g}s of repeated outages, budget {BUDGET_S}s, margin {MARGIN_S}s")
    with tempfile.TemporaryDirectory() as workdir:
        report = run_soak(args.duration, Path(workdir))
    print(json.dumps({k: v for k, v in report.items() if k != "rss_mib_per_cycle"}, indent=2))
    print("RSS MiB per cycle:", report["rss_mib_per_cycle"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if report["problems"]:
        print("FAILED:", "; ".join(report["problems"]))
        return 1
    print("ok: every request answered exactly once within the bound; memory and threads flat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
