"""Chaos scenarios 1-9: a real device runtime against a real tail server through a FaultProxy.

Each scenario sends a fixed number of requests (or requests until a stated deadline) and
``Recorder.check`` asserts: every request answered exactly once with the outputs of the
model its label names, none later than budget + fallback run time + MARGIN_S, and the
device's metrics agree with the test's counts. ``leak_guard`` asserts no thread survives
the runtime and RSS stays flat. Run: ``pytest tests/tools/chaos``.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path

import pytest
from chaos_harness import (
    MARGIN_S,
    ChaosPlan,
    Device,
    Recorder,
    TailProcess,
    device_config,
    leak_guard,
    wait_until,
)

from splitinf.contract.files import write_json_atomic
from splitinf.contract.plan import load_plan
from splitinf.edge.client import ChannelOptions
from splitinf.edge.policy import BreakerState, Mode
from splitinf.edge.runtime import Runtime
from splitinf.tools.faults import FaultProxy, FaultSettings

pytestmark = pytest.mark.timeout(120)


def test_1_healthy_link_never_falls_back(device: Device, proxy: FaultProxy, chaos_plan: ChaosPlan) -> None:
    with leak_guard():
        recorder = device()
        recorder.run(30)
        recorder.check()
        assert recorder.kinds() == {"split": 30}
        assert {a.result.option_id for a in recorder.answers} == {chaos_plan.big_option}
        assert recorder.mode_events() == []
        assert proxy.stats().bytes_forwarded["upstream"] >= 30 * 32 * 1024
        recorder.close()


def test_2_server_killed_falls_back_from_the_first_failure_and_makes_no_calls_while_open(
    device: Device, proxy: FaultProxy, tail: TailProcess
) -> None:
    with leak_guard():
        # a long open period and no light probes: nothing may reach the network while the breaker is open
        recorder = device(light_probe_interval_s=60.0, policy={"open_s": 30.0, "open_max_s": 30.0})
        healthy = recorder.run(5)
        assert recorder.kinds(healthy) == {"split": 5}
        tail.kill()
        first = recorder.one()
        assert first.result.kind == "fallback" and first.result.fallback_reason == "unavailable"
        assert first.result.attempts >= 1
        assert recorder.runtime.policy.breaker is BreakerState.OPEN
        before = proxy.stats()
        while_open = recorder.run(20)
        after = proxy.stats()
        recorder.check()
        assert all(a.result.kind == "fallback" and a.result.attempts == 0 for a in while_open)
        assert all(a.result.mode == Mode.FALLBACK.value for a in while_open)
        assert after.connections_accepted == before.connections_accepted, "a call went out while the breaker was open"
        assert after.bytes_forwarded == before.bytes_forwarded
        recorder.close()


def test_3_black_hole_is_bounded_by_the_budget_not_by_tcp(device: Device, proxy: FaultProxy) -> None:
    with leak_guard():
        recorder = device()
        assert recorder.kinds(recorder.run(5)) == {"split": 5}
        proxy.set(blackhole=True)
        answers = recorder.run(15, pace_s=0.02)
        assert answers[0].result.kind == "fallback" and answers[0].result.fallback_reason == "timeout"
        assert recorder.kinds(answers) == {"fallback": 15}
        assert recorder.runtime.mode is not Mode.SPLIT
        assert proxy.stats().bytes_dropped["upstream"] >= 32 * 1024
        recorder.check()
        recorder.close()


def test_3_black_hole_dead_connection_is_noticed_within_the_keepalive_settings(
    device: Device, proxy: FaultProxy
) -> None:
    recorder = device()
    assert recorder.kinds(recorder.run(3)) == {"split": 3}
    keepalive = ChannelOptions()
    proxy.set(blackhole=True)
    holed_at = time.monotonic()
    recorder.run(3)
    # the client's keepalive pings vanish too: it must give the connection up within its settings
    limit_s = (keepalive.keepalive_time_ms + keepalive.keepalive_timeout_ms) / 1000 + MARGIN_S
    try:
        wait_until(lambda: proxy.stats().closed_by["client"] >= 1, limit_s, "the client to drop the connection")
    finally:
        recorder.close()
    assert time.monotonic() - holed_at <= limit_s + 1.0


def test_4_latency_beyond_the_budget_trips_to_local(device: Device, proxy: FaultProxy) -> None:
    with leak_guard():
        recorder = device(budget_s=0.3)
        assert recorder.kinds(recorder.run(5)) == {"split": 5}
        proxy.set(latency_ms=200)  # 400 ms round trip against a 300 ms budget
        slow = recorder.run(10)
        recorder.check()
        assert slow[0].result.kind == "fallback" and slow[0].result.fallback_reason == "timeout"
        assert recorder.runtime.mode is not Mode.SPLIT
        assert any(e.new == Mode.FALLBACK.value for e in recorder.mode_events())
        # once local, requests are answered without waiting on the slow link
        assert all(a.result.attempts == 0 for a in slow[1:] if a.result.mode == Mode.FALLBACK.value)
        assert sum(a.result.attempts for a in slow) <= 3, "the slow link kept being tried"
        recorder.close()


def test_5_bandwidth_collapse_moves_the_estimate_and_the_cut(
    device: Device, proxy: FaultProxy, chaos_plan: ChaosPlan
) -> None:
    cap_kbit = 1000.0
    with leak_guard():
        recorder = device(budget_s=0.6, policy={"window_s": 1.0})
        healthy = recorder.run(10)
        assert {a.result.option_id for a in healthy} == {chaos_plan.big_option}
        proxy.set(rate_kbit=cap_kbit)
        switched = recorder.run_until(lambda a: a.result.option_id == chaos_plan.small_option, timeout_s=10)
        under_cap = [a for a in recorder.answers if a.index > healthy[-1].index]
        assert len(under_cap) <= 8, f"took {len(under_cap)} requests to leave the 32 KiB cut"
        estimate = recorder.runtime.estimator.snapshot(time.monotonic()).bandwidth_bps
        print(f"cap {cap_kbit * 1000:.0f} b/s, estimate {estimate:.0f} b/s after {len(under_cap)} requests")
        assert 0.5 * cap_kbit * 1000 <= estimate <= 1.5 * cap_kbit * 1000, f"estimate {estimate:.0f} b/s"
        assert switched.result.kind == "split"
        recorder.run(5)
        recorder.check()
        assert recorder.kinds()["fallback"] == 0
        recorder.close()


def _only_the_big_cut(chaos_plan: ChaosPlan, root: Path) -> Path:
    """The chaos plan without its small cut: every request under a cap then carries 32 KiB, so
    every one of them is a bandwidth sample (no switch to the small cut hides a wrong estimate)."""
    plan_dir = root / "big-cut-only"
    shutil.copytree(chaos_plan.path, plan_dir, ignore=shutil.ignore_patterns("server"))
    plan = load_plan(plan_dir)
    options = tuple(o for o in plan.options if o.id != chaos_plan.small_option)
    write_json_atomic(plan_dir / "plan.json", dataclasses.replace(plan, options=options).to_json())
    return plan_dir


def test_5_a_probe_queued_behind_a_large_request_does_not_inflate_the_estimate(
    proxy: FaultProxy, chaos_plan: ChaosPlan, tmp_path: Path
) -> None:
    """The link is capped, the RTT baseline has aged out of the window, and the light probe that
    would renew it goes out while a 32 KiB request fills the bottleneck: its round trip is mostly
    queueing behind that request, and taken as the baseline it made 1 Mbit/s read nearly 4 Mbit/s."""
    cap_bps = 1e6
    skew = [0.0]  # the runtime's clock, moved on past the window instead of waiting it out
    config = device_config(proxy.address, budget_s=1.0)
    with leak_guard():
        runtime = Runtime(
            _only_the_big_cut(chaos_plan, tmp_path),
            config,
            clock=lambda: time.monotonic() + skew[0],
            background_probes=False,
        )
        recorder = Recorder(runtime, chaos_plan, config.budget_s)
        try:
            recorder.run(3)
            proxy.set(rate_kbit=cap_bps / 1000)
            skew[0] += config.policy.window_s + 1.0
            sent = proxy.stats().bytes_forwarded["upstream"]
            large = threading.Thread(target=recorder.one, name="chaos-large-request")
            large.start()
            # the request is past the proxy's burst and ~24 KiB (~0.2 s at the cap) are still queued
            wait_until(
                lambda: proxy.stats().bytes_forwarded["upstream"] - sent >= 8 * 1024, 5, "the request to fill the link"
            )
            assert runtime.probe_once() == "ready"
            large.join(5)
            assert not large.is_alive()
            base = runtime.estimator.snapshot(runtime.clock()).base_rtt_s
            assert base is not None and base < 0.05, f"the queued probe became the baseline: {base:.3f}s"
            recorder.run(4)
            estimate = runtime.estimator.snapshot(runtime.clock()).bandwidth_bps
            print(f"cap {cap_bps:.0f} b/s, estimate {estimate:.0f} b/s ({estimate / cap_bps - 1:+.1%})")
            assert 0.75 * cap_bps <= estimate <= 1.25 * cap_bps, f"estimate {estimate:.0f} b/s, cap {cap_bps:.0f}"
            assert recorder.kinds() == {"split": 8}
            recorder.check()
        finally:
            recorder.close()


def test_6_link_cut_mid_tensor_is_answered_locally_and_never_run_by_the_server(
    device: Device, proxy: FaultProxy, tail: TailProcess, chaos_plan: ChaosPlan
) -> None:
    with leak_guard():
        recorder = device()
        assert recorder.kinds(recorder.run(5)) == {"split": 5}
        tail_model = chaos_plan.tails[chaos_plan.big_option]
        served = tail.requests_ok(tail_model)
        assert served == 5
        proxy.set(close_after_bytes=8000, direction="upstream")  # a quarter of the 32 KiB tensor
        cut = recorder.one()
        assert cut.result.kind == "fallback" and cut.result.fallback_reason in ("unavailable", "timeout")
        assert proxy.stats().connections_cut >= 1
        assert tail.requests_ok(tail_model) == served, "the server ran a request whose tensor was cut"
        proxy.clear()
        recorder.run_until(lambda a: a.result.kind == "split", timeout_s=8)
        recorder.check()
        recorder.close()


def test_7_flapping_link_changes_mode_no_more_than_the_policy_allows(device: Device, proxy: FaultProxy) -> None:
    flap_limit = 2
    with leak_guard():
        recorder = device(policy={"flap_limit": flap_limit, "flap_window_s": 60.0, "open_s": 0.2, "open_max_s": 0.4})
        recorder.run(3)
        down, up = FaultSettings.make(pause=True), FaultSettings()
        proxy.schedule([(0.4, down), (0.6, up)], repeat=None)
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline:
            recorder.run(1, pace_s=0.02)
        proxy.clear()
        recorder.check()
        returns = [e for e in recorder.mode_events() if e.new == Mode.SPLIT.value]
        assert len(returns) <= flap_limit, f"{len(returns)} returns to split in 8 s, limit {flap_limit} per minute"
        assert recorder.kinds()["fallback"] > 0, "the flapping link never caused a fallback"
        recorder.close()


def test_8_heals_within_stabilisation_plus_reconnect_time(device: Device, proxy: FaultProxy) -> None:
    with leak_guard():
        recorder = device()
        policy = recorder.runtime.config.policy
        recorder.run(3)
        proxy.set(pause=True)
        outage_end = time.monotonic() + 1.5
        while time.monotonic() < outage_end:
            recorder.run(1, pace_s=0.02)
        assert recorder.runtime.mode is not Mode.SPLIT
        proxy.clear()
        healed_at = time.monotonic()
        reconnect_s = ChannelOptions().max_reconnect_backoff_ms / 1000
        limit_s = policy.open_max_s + policy.stabilisation_s + policy.min_dwell_s + reconnect_s + 1.0
        back = recorder.run_until(lambda a: a.result.kind == "split", timeout_s=limit_s + 5)
        took = back.at - healed_at
        assert took <= limit_s, f"back in split mode {took:.2f}s after healing; limit {limit_s:.2f}s"
        recorder.run(5)
        recorder.check()
        recorder.close()


def test_9_server_restart_under_load_loses_no_request_and_split_resumes(
    device: Device, proxy: FaultProxy, tail: TailProcess
) -> None:
    with leak_guard():
        recorder = device()
        stop = threading.Event()
        recorder.run_concurrently(2, stop, pace_s=0.01)
        try:
            wait_until(lambda: recorder.kinds()["split"] >= 10, 10, "healthy split answers")
            tail.kill()
            wait_until(lambda: recorder.kinds()["fallback"] >= 5, 10, "fallback answers while the server is down")
            tail.start()
            restarted_at = time.monotonic()
            wait_until(
                lambda: any(a.result.kind == "split" and a.at > restarted_at for a in list(recorder.answers)),
                10,
                "split answers after the restart",
            )
        finally:
            stop.set()
            recorder.join_load()
        recorder.check()
        assert recorder.issued == len(recorder.answers) >= 20
        recorder.close()
