"""Recovery after an outage through a FaultProxy: one slow answer while healing is not a failed recovery.

Seen in an adversarial run: after kill -9 and a restart (and after a flapping link) one probe took
~100 ms while its neighbours took 3-7 ms, and the breaker reopened with a doubled open period.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from chaos_harness import ChaosPlan, device_config, sample_input

from splitinf.edge.policy import Mode
from splitinf.edge.runtime import Runtime
from splitinf.tools.faults import FaultProxy

pytestmark = pytest.mark.timeout(60)


def probe_until(runtime: Runtime, done: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Drive the runtime's probes by hand until ``done()``; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout_s
    pacer = threading.Event()
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; events {runtime.events}")
        runtime.probe_once()
        pacer.wait(0.01)


def test_one_slow_probe_while_healing_does_not_reopen_the_breaker(chaos_plan: ChaosPlan, proxy: FaultProxy) -> None:
    budget_s = 0.1  # a probe of 2 x 75 ms is slow, and within the probe timeout (0.3 s)
    config = device_config(proxy.address, budget_s=budget_s, light_probe_interval_s=60.0)
    with Runtime(chaos_plan.path, config, background_probes=False) as runtime:
        assert runtime.infer({"x": sample_input(0)}, budget_s=budget_s).kind == "split"
        proxy.set(pause=True)
        assert runtime.infer({"x": sample_input(1)}, budget_s=budget_s).kind == "fallback"
        assert runtime.mode is Mode.FALLBACK
        proxy.set(latency_ms=75)
        sent: list[str | None] = []

        def one_half_open_probe() -> bool:
            sent.append(runtime.probe_once())
            return "half_open" in sent

        probe_until(runtime, one_half_open_probe, 10, "the first half-open probe")
        proxy.clear()
        probe_until(runtime, lambda: runtime.mode is not Mode.PROBING, 10, "the end of the half-open period")
        reasons = [(e.new, e.reason) for e in runtime.events if e.kind == "mode"]
        assert ("local", "probe_slow") not in reasons
        assert runtime.mode is Mode.SPLIT, reasons
        assert runtime.infer({"x": sample_input(2)}, budget_s=budget_s).kind == "split"
