"""Devices sharing one server shed its load one by one (splitinf.edge.policy.Spread), on a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitinf.contract.plan import Correction, Option, Plan, choose_option
from splitinf.contract.tensors import TensorSpec
from splitinf.edge.config import load_device_config
from splitinf.edge.correction import CorrectionConfig, CostCorrector
from splitinf.edge.estimate import Estimates
from splitinf.edge.policy import Policy, PolicyConfig, Spread
from splitinf.errors import ConfigError
from splitinf.tools.testing.plans import split_option

X = (TensorSpec("x", "float32", (1, 4)),)
# Send the input (a heavy tail: the server's work, which queues) or cut late (a heavy head on the device).
OFFLOAD = split_option("x", 50_000, 0.95, head_s=0.0, tail_s=0.020)
LATE = split_option("late", 1_000, 0.95, head_s=0.060, tail_s=0.0005)
FALLBACK = Option(id="fallback", kind="fallback", accuracy=0.5, model="f.onnx", seconds=0.001)
PLAN = Plan("m", "0" * 64, X, X, (OFFLOAD, LATE, FALLBACK))
ESTIMATES = Estimates(0.002, 0.001, 0.2, 100e6, 0.002, 0.0, 0.0, 5)
BANDWIDTH, RTT = ESTIMATES.bandwidth_bps, ESTIMATES.rtt_s
BUDGET = 1.0
NO_SPREAD = PolicyConfig(budget_s=BUDGET, spread_margin=0.0, spread_patience_s=0.0)
MARGINS_ONLY = PolicyConfig(budget_s=BUDGET, spread_margin=0.2, spread_patience_s=0.0)
SPREAD = PolicyConfig(budget_s=BUDGET)  # the defaults: margins up to 20%, patience up to 5 s


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def queued(queue_s: float) -> Correction:
    return Correction(queues={OFFLOAD.id: queue_s})


def leaving_queue_ms(policy: Policy) -> float:
    """The queue (ms, rising 0.1 ms at a time) at which ``policy`` leaves OFFLOAD."""
    assert policy.decide(ESTIMATES).option is OFFLOAD  # the fastest without a queue
    for tenths in range(2000):
        if policy.decide(ESTIMATES, correction=queued(tenths / 10_000)).option is not OFFLOAD:
            return tenths / 10
    raise AssertionError("never left OFFLOAD")


def test_devices_with_different_seeds_leave_a_rising_queue_at_different_levels() -> None:
    devices = [Policy(PLAN, MARGINS_ONLY, FakeClock(), spread_seed=seed) for seed in range(6)]
    levels = [leaving_queue_ms(device) for device in devices]
    assert len(set(levels)) == len(levels), levels
    # each leaves once LATE is faster by more than its own margin, never before the rule would
    rule_ms = leaving_queue_ms(Policy(PLAN, NO_SPREAD, FakeClock()))
    for device, level in zip(devices, levels, strict=True):
        assert level >= rule_ms
        at_leaving = queued(level / 1000)
        assert choose_option([OFFLOAD, LATE], BANDWIDTH, RTT, BUDGET, at_leaving)[0] is LATE  # type: ignore[index]
        offload_s, late_s = (choose_option([o], BANDWIDTH, RTT, BUDGET, at_leaving)[1] for o in (OFFLOAD, LATE))  # type: ignore[index]
        assert offload_s > late_s * (1 + device.spread.margin) >= offload_s - 0.0001, (level, device.spread)
    assert max(levels) - min(levels) > 5, levels  # margins spread over up to 20% of LATE's 63 ms


def test_spread_zero_is_the_rule_and_all_devices_leave_together() -> None:
    devices = [Policy(PLAN, NO_SPREAD, FakeClock(), spread_seed=seed) for seed in range(6)]
    assert {device.spread for device in devices} == {Spread(0.0, 0.0)}
    levels = {leaving_queue_ms(device) for device in devices}
    assert len(levels) == 1
    (level,) = levels
    assert choose_option([OFFLOAD, LATE], BANDWIDTH, RTT, BUDGET, queued((level - 0.1) / 1000))[0] is OFFLOAD  # type: ignore[index]
    assert choose_option([OFFLOAD, LATE], BANDWIDTH, RTT, BUDGET, queued(level / 1000))[0] is LATE  # type: ignore[index]


def test_the_same_seed_gives_the_same_draws_and_the_same_decisions() -> None:
    assert Spread.draw(SPREAD, 3) == Spread.draw(SPREAD, 3) != Spread.draw(SPREAD, 4)
    assert 0 <= Spread.draw(SPREAD, 3).margin <= 0.2 and 0 <= Spread.draw(SPREAD, 3).patience_s <= 5
    assert Spread.draw(SPREAD) != Spread.draw(SPREAD)  # no seed: the OS's entropy, each device its own

    def decisions(seed: int) -> list[str]:
        clock = FakeClock()
        policy = Policy(PLAN, SPREAD, clock, spread_seed=seed)
        chosen = []
        for step in range(80):
            clock.now += 0.1
            chosen.append(policy.decide(ESTIMATES, correction=queued(0.002 * step)).option.id)
        return chosen

    assert decisions(3) == decisions(3)
    assert decisions(3) != decisions(4)


def test_patience_holds_a_queued_option_for_its_own_time_then_leaves() -> None:
    clock = FakeClock()
    policy = Policy(PLAN, SPREAD, clock, spread_seed=1)
    patience = policy.spread.patience_s
    assert patience > 0.5
    assert policy.decide(ESTIMATES).option is OFFLOAD
    deep = queued(0.200)  # far past any margin
    start = clock.now
    while clock.now - start < patience - 0.01:
        assert policy.decide(ESTIMATES, correction=deep).option is OFFLOAD, clock.now - start
        clock.now += 0.05
    clock.now = start + patience + 1e-9
    assert policy.decide(ESTIMATES, correction=deep).option is LATE
    # back once the queue's figure is gone (stale), at once: nothing queues on LATE
    assert policy.decide(ESTIMATES).option is OFFLOAD


def test_a_shorter_queue_restarts_the_patience() -> None:
    clock = FakeClock()
    policy = Policy(PLAN, SPREAD, clock, spread_seed=1)
    patience = policy.spread.patience_s
    policy.decide(ESTIMATES)
    policy.decide(ESTIMATES, correction=queued(0.200))
    clock.now += patience * 0.9
    assert policy.decide(ESTIMATES).option is OFFLOAD  # the queue went: the wait starts over
    policy.decide(ESTIMATES, correction=queued(0.200))
    clock.now += patience * 0.9
    assert policy.decide(ESTIMATES, correction=queued(0.200)).option is OFFLOAD


def test_one_device_picks_the_fastest_and_moves_at_once_for_its_own_reasons() -> None:
    clock = FakeClock()
    config = PolicyConfig(budget_s=BUDGET, spread_margin=0.5, spread_patience_s=60.0)
    policy = Policy(PLAN, config, clock, spread_seed=0)
    assert policy.spread.margin > 0.2 and policy.spread.patience_s > 10
    assert policy.decide(ESTIMATES).option is OFFLOAD  # no queue: exactly the rule
    # the server computes the tail 3.2x slower (no queue): OFFLOAD 70 ms, LATE 63 ms, well within
    # the margin, yet LATE is taken at once, as is OFFLOAD again when the device's head slows
    assert policy.decide(ESTIMATES, correction=Correction(tail=3.2)).option is LATE
    assert policy.decide(ESTIMATES, correction=Correction(tail=3.2, head=1.3)).option is OFFLOAD
    # over budget: gone at once, whatever the patience
    tight = PolicyConfig(budget_s=0.05, spread_margin=0.5, spread_patience_s=60.0)
    policy = Policy(PLAN, tight, clock, spread_seed=0)
    assert policy.decide(ESTIMATES).option is OFFLOAD
    assert policy.decide(ESTIMATES, correction=queued(0.100)).option is FALLBACK


def run_shared_server(config: PolicyConfig, devices: int, seconds: float = 60.0) -> list[list[str]]:
    """``devices`` policies with their own live corrections on one server that queues OFFLOAD's
    tail behind every other device's (0.25 s rounds, each device one request a round); the
    options chosen, a list per round."""
    clock = FakeClock()
    correction = CorrectionConfig(window_s=10.0, relax_s=10.0)
    fleet = [(Policy(PLAN, config, clock, spread_seed=seed), CostCorrector(correction)) for seed in range(devices)]
    rounds = []
    for _ in range(int(seconds / 0.25)):
        clock.now += 0.25
        chosen = [policy.decide(ESTIMATES, correction=c.correction(clock.now)).option for policy, c in fleet]
        queue_s = OFFLOAD.tail_seconds * (chosen.count(OFFLOAD) - 1)
        for option, (_, corrector) in zip(chosen, fleet, strict=True):
            if option is OFFLOAD:
                corrector.observe_queue(queue_s, clock.now, OFFLOAD.id)
        rounds.append([option.id for option in chosen])
    return rounds


def _most_leaving_at_once(rounds: list[list[str]]) -> int:
    return max(
        sum(a == OFFLOAD.id and b != OFFLOAD.id for a, b in zip(before, after, strict=True))
        for before, after in zip(rounds, rounds[1:], strict=False)
    )


def test_devices_sharing_a_server_shed_its_queue_one_by_one_and_keep_it_busy() -> None:
    n = 8
    herd = run_shared_server(NO_SPREAD, n)
    spread = run_shared_server(SPREAD, n)
    # without a spread all leave at the same request and the server is left idle
    assert _most_leaving_at_once(herd) == n
    assert any(OFFLOAD.id not in chosen for chosen in herd[8:])
    # with one, they leave a few at a time and some stay on OFFLOAD throughout
    assert _most_leaving_at_once(spread) <= n // 4, [r.count(OFFLOAD.id) for r in spread]
    assert all(OFFLOAD.id in chosen for chosen in spread), [r.count(OFFLOAD.id) for r in spread]
    assert any(LATE.id in chosen for chosen in spread)


def test_the_spread_settings_are_checked_and_read_from_the_device_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="spread_margin"):
        PolicyConfig(spread_margin=-0.1)
    with pytest.raises(ConfigError, match="spread_patience_s"):
        PolicyConfig(spread_patience_s=-1)
    path = tmp_path / "device.toml"
    path.write_text("spread_seed = 11\n[policy]\nspread_margin = 0.1\nspread_patience_s = 2\n")
    config = load_device_config(path)
    assert (config.spread_seed, config.policy.spread_margin, config.policy.spread_patience_s) == (11, 0.1, 2.0)
    assert Policy(PLAN, config.policy, FakeClock(), config.spread_seed).spread == Spread.draw(config.policy, 11)
