"""The policy engine through every transition, driven by a fake clock (never sleeps)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitinf.contract.plan import Option, Plan
from splitinf.contract.tensors import TensorSpec
from splitinf.edge.estimate import Estimates
from splitinf.edge.policy import BreakerState, Event, Mode, Policy, PolicyConfig
from splitinf.errors import ConfigError, PlanError
from splitinf.tools.testing.plans import split_option

X = TensorSpec("x", "float32", (1, 4))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


FALLBACK = Option(id="fallback", kind="fallback", accuracy=0.80, model="device/fallback.onnx", seconds=0.002)
LOCAL = Option(id="local", kind="local", accuracy=0.95, model="device/local.onnx", seconds=0.5)
BIG = split_option("early", 1_000_000, 0.95)  # 8 Mbit: needs a fast link
SMALL = split_option("late", 1_000, 0.95)
LOSSY = split_option("late8", 250, 0.93)


def make_plan(*options: Option) -> Plan:
    return Plan("m", "0" * 64, (X,), (X,), options)


def estimates(bandwidth_bps: float = 100e6, rtt_s: float = 0.01) -> Estimates:
    return Estimates(rtt_s, rtt_s / 2, 0.2, bandwidth_bps, rtt_s, 0.0, 0.0, 5)


CFG = PolicyConfig(
    budget_s=0.1,
    window_s=30,
    min_calls=3,
    trip_after_failures=2,
    open_s=5,
    open_max_s=40,
    half_open_probes=2,
    probe_interval_s=1,
    stabilisation_s=10,
    min_dwell_s=5,
    flap_window_s=300,
    flap_limit=2,
    quarantine_s=60,
)


def make_policy(config: PolicyConfig = CFG, *options: Option) -> tuple[Policy, FakeClock]:
    clock = FakeClock()
    return Policy(make_plan(*(options or (BIG, SMALL, FALLBACK))), config, clock), clock


def reach_split_again(policy: Policy, clock: FakeClock, est: Estimates | None = None) -> None:
    """From FALLBACK: wait out the open period, probe healthily, stabilise."""
    est = est or estimates()
    clock.advance(max(policy._open_until - clock.now, CFG.min_dwell_s))
    policy.tick(est)
    assert policy.mode is Mode.PROBING
    for _ in range(12):
        if policy.probe_due():
            policy.probe_started()
            policy.record_probe(ok=True, latency_s=0.01)
        clock.advance(1)
        policy.tick(est)
        if policy.mode is Mode.SPLIT:
            return
    raise AssertionError(f"did not return to SPLIT, mode {policy.mode}")


def test_split_decision_and_local_model_when_it_is_better() -> None:
    policy, _ = make_policy(CFG, BIG, SMALL, LOCAL, FALLBACK)
    decision = policy.decide(estimates(), budget_s=0.1)
    assert decision.option is SMALL and decision.remote and decision.mode is Mode.SPLIT
    better_local = Option(id="local", kind="local", accuracy=0.99, model="l.onnx", seconds=0.05)
    policy2, _ = make_policy(CFG, SMALL, better_local, FALLBACK)
    assert policy2.decide(estimates(), budget_s=0.1).option is better_local
    assert policy2.mode is Mode.SPLIT


def test_predicted_over_budget_falls_back_at_once_without_growing_open_period() -> None:
    policy, _ = make_policy(CFG, BIG, SMALL, LOCAL, FALLBACK)
    decision = policy.decide(estimates(bandwidth_bps=1e3), budget_s=0.1)
    assert decision.option is FALLBACK  # local takes 0.5 s: over budget too
    assert policy.mode is Mode.FALLBACK and policy.breaker is BreakerState.OPEN
    (event,) = decision.events
    assert (event.old, event.new, event.reason, event.open_s) == ("split", "fallback", "predicted_over_budget", 5)
    # a generous budget: the local full model is the most accurate that fits
    assert policy.decide(estimates(bandwidth_bps=1e3), budget_s=1.0).option is LOCAL


def test_consecutive_failures_trip_and_no_remote_calls_while_open() -> None:
    policy, clock = make_policy()
    assert policy.record(SMALL.id, ok=False, reason="unavailable") == []
    (event,) = policy.record(SMALL.id, ok=False, reason="unavailable")
    assert (event.kind, event.new, event.reason, event.breaker) == (
        "mode",
        "fallback",
        "unavailable",
        BreakerState.OPEN,
    )
    for _ in range(4):
        clock.advance(1)
        decision = policy.decide(estimates())
        assert not decision.remote and decision.option is FALLBACK
        assert not policy.probe_due()
    assert policy.breaker is BreakerState.OPEN


def test_failure_rate_trips_within_a_time_window() -> None:
    cfg = PolicyConfig(**{**CFG.__dict__, "trip_after_failures": 5, "min_calls": 4})
    policy, clock = make_policy(cfg)
    outcomes = [True, False, True, False]
    events = []
    for ok in outcomes:
        clock.advance(2)
        events += policy.record(SMALL.id, ok=ok, latency_s=0.01)
    assert [e.reason for e in events] == ["failure_rate"]


def test_old_calls_leave_the_window() -> None:
    cfg = PolicyConfig(**{**CFG.__dict__, "trip_after_failures": 5, "min_calls": 4})
    policy, clock = make_policy(cfg)
    for ok in (False, False, True):
        policy.record(SMALL.id, ok=ok, latency_s=0.01)
    clock.advance(31)  # the two failures are out of the 30 s window
    for _ in range(3):
        assert policy.record(SMALL.id, ok=True, latency_s=0.01) == []
    assert policy.mode is Mode.SPLIT


def test_slow_calls_trip_the_breaker() -> None:
    policy, clock = make_policy()
    events = []
    for latency in (0.05, 0.2, 0.3):  # budget 0.1: two of three slow
        clock.advance(1)
        events += policy.record(SMALL.id, ok=True, latency_s=latency)
    assert [e.reason for e in events] == ["slow_calls"]
    assert policy.mode is Mode.FALLBACK


def test_min_calls_guards_against_tripping_on_one_slow_call() -> None:
    policy, _ = make_policy()
    assert policy.record(SMALL.id, ok=True, latency_s=5.0) == []
    assert policy.mode is Mode.SPLIT


def test_full_cycle_with_probing_stabilisation_and_return() -> None:
    policy, clock = make_policy()
    policy.record(SMALL.id, ok=False)
    policy.record(SMALL.id, ok=False)
    assert policy.mode is Mode.FALLBACK
    clock.advance(4.9)
    assert policy.tick(estimates()) == [] and policy.mode is Mode.FALLBACK
    clock.advance(0.1)
    (event,) = policy.tick(estimates())
    assert (event.old, event.new, event.breaker) == ("fallback", "probing", BreakerState.HALF_OPEN)
    # half-open: one probe at a time, at most once per interval; requests still answered locally
    assert policy.probe_due()
    assert policy.probe_option() is SMALL
    policy.probe_started()
    assert not policy.probe_due()
    assert policy.record_probe(ok=True, latency_s=0.01) == []
    assert not policy.probe_due()  # interval not over
    assert not policy.decide(estimates()).remote
    clock.advance(1)
    policy.probe_started()
    policy.record_probe(ok=True, latency_s=0.01)
    # enough probes, but the stabilisation period (10 s) is not over
    clock.advance(8.9)
    assert policy.tick(estimates()) == []
    clock.advance(0.1)
    (event,) = policy.tick(estimates())
    assert (event.old, event.new, event.reason, event.breaker) == ("probing", "split", "stable", BreakerState.CLOSED)
    assert policy.decide(estimates()).remote


def test_probe_failure_reopens_with_a_growing_capped_open_period() -> None:
    policy, clock = make_policy()
    policy.record(SMALL.id, ok=False)
    opens = [policy.record(SMALL.id, ok=False)[0].open_s]
    for _ in range(4):
        clock.advance(max(policy._open_until - clock.now, CFG.min_dwell_s))
        assert policy.tick(estimates())[0].new == "probing"
        policy.probe_started()
        (event,) = policy.record_probe(ok=False, reason="unavailable")
        assert (event.old, event.new, event.reason) == ("probing", "fallback", "unavailable")
        opens.append(event.open_s)
    assert opens == [5, 10, 20, 40, 40]


def _trip_and_wait_for_probing(policy: Policy, clock: FakeClock) -> float:
    """Two failures trip the breaker (open 5 s); returns the open period once PROBING."""
    policy.record(SMALL.id, ok=False)
    (event,) = policy.record(SMALL.id, ok=False)
    clock.advance(max(policy._open_until - clock.now, CFG.min_dwell_s))
    assert policy.tick(estimates())[0].new == "probing"
    return event.open_s


def _probe(policy: Policy, clock: FakeClock, *, ok: bool = True, latency_s: float = 0.01) -> list[Event]:
    clock.advance(CFG.probe_interval_s)
    assert policy.probe_due()
    policy.probe_started()
    return policy.record_probe(ok=ok, latency_s=latency_s) + policy.tick(estimates())


def test_one_slow_probe_during_stabilisation_neither_trips_nor_grows_the_open_period() -> None:
    # a restarted server's first answer (reconnect, warm-up) is slow; its neighbours are not
    policy, clock = make_policy()
    assert _trip_and_wait_for_probing(policy, clock) == 5
    assert _probe(policy, clock, latency_s=0.5) == []  # budget 0.1
    assert policy.mode is Mode.PROBING
    events = []
    for _ in range(12):
        if policy.mode is Mode.PROBING:
            events += _probe(policy, clock)
    assert [(e.old, e.new, e.reason) for e in events] == [("probing", "split", "stable")]
    # the next trip is the second, not the third: the slow probe did not count as a failed recovery
    policy.record(SMALL.id, ok=False)
    (event,) = policy.record(SMALL.id, ok=False)
    assert event.open_s == 10


def test_a_sustained_slow_probe_rate_trips_with_a_growing_open_period() -> None:
    policy, clock = make_policy()
    _trip_and_wait_for_probing(policy, clock)
    for _ in range(CFG.min_calls - 1):  # too few probes for a rate
        assert _probe(policy, clock, latency_s=0.5) == []
    (event,) = _probe(policy, clock, latency_s=0.5)
    assert (event.old, event.new, event.reason, event.open_s) == ("probing", "fallback", "probe_slow", 10)


def test_a_slow_probe_rate_counts_over_the_half_open_period() -> None:
    policy, clock = make_policy(dataclasses.replace(CFG, half_open_probes=3))  # min_calls 3
    _trip_and_wait_for_probing(policy, clock)
    assert _probe(policy, clock, latency_s=0.5) == []
    assert _probe(policy, clock) == []
    assert _probe(policy, clock) == []  # 1 slow of 3: under slow_call_rate 0.5
    (event,) = _probe(policy, clock, latency_s=0.5)  # 2 of 4
    assert (event.new, event.reason) == ("fallback", "probe_slow")


def test_a_failed_probe_still_trips_at_once_even_after_a_slow_one() -> None:
    policy, clock = make_policy()
    _trip_and_wait_for_probing(policy, clock)
    assert _probe(policy, clock, latency_s=0.5) == []
    (event,) = _probe(policy, clock, ok=False)
    assert (event.new, event.reason, event.open_s) == ("fallback", "probe_failed", 10)


def test_stable_probes_but_bad_estimates_go_back_to_fallback() -> None:
    policy, clock = make_policy()
    policy.record(SMALL.id, ok=False)
    policy.record(SMALL.id, ok=False)
    with pytest.raises(AssertionError):
        reach_split_again(policy, clock, estimates(bandwidth_bps=10))
    assert policy.mode is Mode.FALLBACK


def test_flap_limit_holds_fallback_until_the_window_allows() -> None:
    policy, clock = make_policy()
    # the start in SPLIT is not a return; two returns are allowed per 300 s
    for _ in range(2):
        policy.record(SMALL.id, ok=False)
        policy.record(SMALL.id, ok=False)
        reach_split_again(policy, clock)
    policy.record(SMALL.id, ok=False)
    policy.record(SMALL.id, ok=False)
    first_return = policy._split_entries[0]
    clock.advance(100)
    policy.tick(estimates())
    assert policy.mode is Mode.FALLBACK  # open period long over, but the flap limit holds it
    clock.now = first_return + 300
    assert policy.tick(estimates())[0].new == "probing"


def test_mismatch_quarantines_the_option_not_the_link() -> None:
    policy, clock = make_policy()
    (event,) = policy.record(SMALL.id, ok=False, mismatch=True, reason="tail_sha256_mismatch")
    assert (event.kind, event.old, event.reason) == ("quarantine", SMALL.id, "tail_sha256_mismatch")
    assert policy.mode is Mode.SPLIT
    assert policy.decide(estimates()).option is BIG
    policy.record(BIG.id, ok=False, mismatch=True)
    decision = policy.decide(estimates())
    assert decision.option is FALLBACK and decision.events[0].reason == "no_usable_split_option"
    clock.advance(30)
    assert policy.tick(estimates()) == []  # nothing to probe while all options are quarantined
    clock.advance(31)
    assert policy.tick(estimates())[0].new == "probing"


def test_late_outcome_after_a_mode_change_is_ignored() -> None:
    policy, _ = make_policy()
    policy.record(SMALL.id, ok=False)
    policy.record(SMALL.id, ok=False)
    assert policy.record(SMALL.id, ok=False) == []
    assert policy.record_probe(ok=True) == []


def test_bad_config_and_plan_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="failure_rate"):
        PolicyConfig(failure_rate=1.5)
    with pytest.raises(ConfigError, match="open_max_s"):
        PolicyConfig(open_s=10, open_max_s=5)
    with pytest.raises(PlanError, match="fallback"):
        Policy(make_plan(SMALL))


ACTIONS = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=4.0),
        st.sampled_from(["decide", "ok", "fail", "slow", "probe_ok", "probe_fail", "probe_slow", "bad_net"]),
    ),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(ACTIONS)
def test_random_outcomes_never_oscillate_faster_than_dwell_allows(actions: list[tuple[float, str]]) -> None:
    policy, clock = make_policy()
    mode_events = []
    for dt, action in actions:
        clock.advance(dt)
        events = []
        if action == "decide":
            events += policy.decide(estimates()).events
        elif action == "bad_net":
            events += policy.decide(estimates(bandwidth_bps=10)).events
        elif action in ("ok", "fail", "slow"):
            events += policy.record(SMALL.id, ok=action != "fail", latency_s=0.5 if action == "slow" else 0.01)
        elif policy.probe_due():
            policy.probe_started()
            events += policy.record_probe(ok=action != "probe_fail", latency_s=0.5 if action == "probe_slow" else 0.01)
        mode_events += [e for e in events if e.kind == "mode"]
    entered = {"split": clock.now - 10**6}
    split_returns: list[float] = []
    for event in mode_events:
        stayed = event.at - entered[event.old]
        if event.old in ("fallback", "probing") and event.new != "fallback":
            assert stayed >= CFG.min_dwell_s
        if event.new == "split":
            assert stayed >= CFG.stabilisation_s
            split_returns.append(event.at)
        entered[event.new] = event.at
    for i, at in enumerate(split_returns):
        assert sum(1 for t in split_returns[i:] if t - at < CFG.flap_window_s) <= CFG.flap_limit
    for a, b in zip(split_returns, split_returns[1:], strict=False):
        assert b - a >= CFG.min_dwell_s + CFG.stabilisation_s
