"""The live cost correction (splitinf.edge.correction) with a fake clock, and the decision rule under it."""

from __future__ import annotations

import pytest

from splitinf.contract.plan import AS_PROFILED, Correction, Option, choose_option, expected_latency
from splitinf.edge.correction import CorrectionConfig, CostCorrector
from splitinf.edge.estimate import Estimates
from splitinf.edge.policy import Mode, Policy
from splitinf.tools.testing.plans import split_option

CONFIG = CorrectionConfig(window_s=10.0, relax_s=10.0, floor_s=0.001)


def test_a_part_as_profiled_keeps_the_profile() -> None:
    corrector = CostCorrector(CONFIG)
    assert corrector.correction(0.0) == AS_PROFILED
    for t in range(5):
        corrector.observe("head", 0.010, 0.010, now=float(t))
    assert corrector.factor("head", 5.0) == pytest.approx(1.0)
    assert corrector.factor("tail", 5.0) == 1.0  # no samples: the profile


def test_a_throttled_device_is_followed_within_three_requests_and_one_outlier_is_not() -> None:
    corrector = CostCorrector(CONFIG)
    for t in range(8):
        corrector.observe("head", 0.010, 0.010, now=t * 0.5)
    corrector.observe("head", 0.200, 0.010, now=4.0)  # one GC pause
    assert corrector.factor("head", 4.0) == pytest.approx(1.0)
    for t in range(3):  # throttled: 6x slower
        corrector.observe("head", 0.060, 0.010, now=4.5 + t * 0.5)
    assert corrector.factor("head", 5.5) == pytest.approx(61 / 11)


def test_a_first_slow_request_alone_moves_nothing() -> None:
    corrector = CostCorrector(CONFIG)
    corrector.observe("head", 0.100, 0.010, now=0.0, option_id="late")  # cold: allocations, caches
    assert corrector.correction(0.0) == AS_PROFILED
    for t in (1.0, 2.0):
        corrector.observe("head", 0.010, 0.010, now=t, option_id="late")
    assert corrector.correction(2.0).head_factor("late") == pytest.approx(1.0)  # the median of three


def test_the_floor_keeps_tiny_parts_from_swinging_the_ratio() -> None:
    corrector = CostCorrector(CONFIG)
    for t in range(3):
        corrector.observe("head", 0.0002, 0.00002, now=float(t))  # a 20 us copy that took 200 us
    assert corrector.factor("head", 3.0) < 1.2


def test_a_stale_factor_relaxes_back_to_the_profile_and_a_stale_queue_is_forgotten() -> None:
    corrector = CostCorrector(CONFIG)
    for t in range(3):
        corrector.observe("tail", 0.040, 0.010, now=float(t))
        corrector.observe_queue(0.050, now=float(t), option_id="offload")
    loaded = corrector.correction(2.0)
    assert loaded.tail == pytest.approx(41 / 11) and loaded.queue_s("offload") == pytest.approx(0.05)
    assert corrector.correction(12.0) == loaded  # still within the window of the last sample
    half = corrector.correction(17.0)  # half the relaxation period after the window
    assert half.tail == pytest.approx((41 / 11) ** 0.5) and half.queue_s("offload") == 0.0  # to be measured again
    assert corrector.correction(30.0) == AS_PROFILED


def test_samples_without_a_profile_are_ignored_and_unknown_parts_refused() -> None:
    corrector = CostCorrector(CONFIG)
    assert corrector.observe("tail", 0.05, 0.0, now=0.0) is False
    with pytest.raises(ValueError, match="unknown part"):
        corrector.observe("server", 0.05, 0.01, now=0.0)


def test_expected_latency_scales_each_part_and_adds_the_queue() -> None:
    split = split_option("c", 1000, 0.9, head_s=0.01, tail_s=0.02)
    base = expected_latency(split, 8e6, 0.005)
    correction = Correction(head=3.0, tail=2.0, queues={split.id: 0.1})
    assert expected_latency(split, 8e6, 0.005, correction) == pytest.approx(base + 0.02 + 0.02 + 0.1)
    local = Option(id="local", kind="local", model="m.onnx", seconds=0.03)
    assert expected_latency(local, 8e6, 0.005, Correction(local=2.0)) == pytest.approx(0.06)


# Offload the input (a copy for a head, a heavy tail) or cut late (a heavy head, a light tail).
OFFLOAD = split_option("x", 50_000, 0.95, head_s=0.0, tail_s=0.020)
LATE = split_option("late", 1_000, 0.95, head_s=0.020, tail_s=0.001)


def test_the_choice_moves_to_offloading_on_a_slow_device_and_back_on_a_loaded_server() -> None:
    bandwidth, rtt = 100e6, 0.002
    assert choose_option([OFFLOAD, LATE], bandwidth, rtt, 1.0)[0] is LATE  # type: ignore[index]
    assert choose_option([OFFLOAD, LATE], bandwidth, rtt, 1.0, Correction(head=4.0))[0] is OFFLOAD  # type: ignore[index]
    loaded = Correction(head=4.0, tail=5.0)
    assert choose_option([OFFLOAD, LATE], bandwidth, rtt, 1.0, loaded)[0] is LATE  # type: ignore[index]


def test_the_policy_decides_with_the_correction() -> None:
    from splitinf.contract.plan import Plan
    from splitinf.contract.tensors import TensorSpec

    fallback = Option(id="fallback", kind="fallback", accuracy=0.5, model="f.onnx", seconds=0.001)
    spec = (TensorSpec("x", "float32", (1, 4)),)
    plan = Plan("m", "0" * 64, spec, spec, (OFFLOAD, LATE, fallback))
    now = [0.0]
    policy = Policy(plan, clock=lambda: now[0])
    estimates = Estimates(0.002, 0.001, 0.2, 100e6, 0.002, 0.0, 0.0, 5)
    assert policy.decide(estimates).option is LATE
    assert policy.decide(estimates, correction=Correction(head=4.0)).option is OFFLOAD
    # the whole server so loaded that no split fits the budget: the device answers itself
    queued = {OFFLOAD.id: 1.0, LATE.id: 1.0}
    decision = policy.decide(estimates, correction=Correction(head=4.0, queues=queued))
    assert decision.option is fallback and policy.mode is Mode.FALLBACK


def test_heads_and_tails_are_followed_per_option_and_unseen_options_take_their_kinds_factor() -> None:
    corrector = CostCorrector(CONFIG)
    for t in range(3):  # the whole model on a loaded server: 5x its profile
        corrector.observe("tail", 0.050, 0.010, now=float(t), option_id="offload")
    for t in range(3, 6):  # a light tail on the same server: as profiled
        corrector.observe("tail", 0.0005, 0.0005, now=float(t), option_id="late")
    correction = corrector.correction(6.0)
    assert correction.tail_factor("offload") == pytest.approx(51 / 11)
    assert correction.tail_factor("late") == pytest.approx(1.0)
    assert correction.tail_factor("never_run") == correction.tail
    assert correction.head_factor("late") == 1.0
    # once its samples leave the window an option takes its kind's factor, which relaxes to the profile
    assert "offload" not in corrector.correction(20.0).tails
    assert corrector.correction(40.0).tail_factor("offload") == 1.0


def test_the_servers_queue_is_followed_per_option_and_moves_the_choice_off_a_queued_tail() -> None:
    corrector = CostCorrector(CONFIG)
    for t in range(3):  # many devices send the whole model: its tail queues 200 ms; the light tail does not
        corrector.observe_queue(0.200, now=float(t), option_id=OFFLOAD.id)
        corrector.observe_queue(0.0, now=float(t) + 0.5, option_id=LATE.id)
    correction = corrector.correction(3.0)
    assert correction.queue_s(OFFLOAD.id) == pytest.approx(0.2) and correction.queue_s(LATE.id) == 0.0
    assert correction.queue_s("never_run") == 0.0  # a server queues per model: this one is to be tried
    bandwidth, rtt = 100e6, 0.002
    assert choose_option([OFFLOAD, LATE], bandwidth, rtt, 1.0, Correction(head=2.0))[0] is OFFLOAD  # type: ignore[index]
    queued = Correction(head=2.0, queues=correction.queues)
    assert choose_option([OFFLOAD, LATE], bandwidth, rtt, 1.0, queued)[0] is LATE  # type: ignore[index]
