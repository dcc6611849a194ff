"""RTT (RFC 6298) and bandwidth estimators, checked against hand-computed values."""

from __future__ import annotations

import pytest

from splitinf.edge.estimate import BandwidthEstimator, NetworkEstimator, RttEstimator


def test_first_sample_sets_srtt_and_half_rttvar() -> None:
    est = RttEstimator(min_rto_s=0.001)
    assert est.rto_s == 1.0  # RFC 6298 (2.1): initial RTO of one second
    assert est.observe(0.100, now=0.0)
    assert est.srtt_s == pytest.approx(0.100)
    assert est.rttvar_s == pytest.approx(0.050)
    assert est.rto_s == pytest.approx(0.100 + 4 * 0.050)


def test_second_sample_follows_rfc_6298_formulas() -> None:
    est = RttEstimator(min_rto_s=0.001)
    est.observe(0.100, now=0.0)
    est.observe(0.200, now=1.0)
    # RTTVAR = 3/4 * 0.05 + 1/4 * |0.1 - 0.2| = 0.0375 + 0.025 = 0.0625
    # SRTT = 7/8 * 0.1 + 1/8 * 0.2 = 0.1125 ; RTO = 0.1125 + 4 * 0.0625 = 0.3625
    assert est.rttvar_s == pytest.approx(0.0625)
    assert est.srtt_s == pytest.approx(0.1125)
    assert est.rto_s == pytest.approx(0.3625)
    est.observe(0.100, now=2.0)
    # RTTVAR = 3/4 * 0.0625 + 1/4 * 0.0125 = 0.05 ; SRTT = 7/8 * 0.1125 + 1/8 * 0.1 = 0.1109375
    assert est.rttvar_s == pytest.approx(0.05)
    assert est.srtt_s == pytest.approx(0.1109375)
    assert est.rto_s == pytest.approx(0.1109375 + 0.2)


def test_rto_is_clamped_and_granularity_applies() -> None:
    est = RttEstimator(min_rto_s=0.2, max_rto_s=2.0, granularity_s=0.01)
    est.observe(0.001, now=0.0)
    assert est.rto_s == 0.2  # 0.001 + max(0.01, 0.002) is below the minimum
    est2 = RttEstimator(min_rto_s=0.0001, granularity_s=0.01)
    for t in range(50):
        est2.observe(0.005, now=float(t))
    # RTTVAR decays towards 0, so G dominates K*RTTVAR
    assert est2.rto_s == pytest.approx(est2.srtt_s + 0.01)  # type: ignore[operator]
    est.observe(10.0, now=1.0)
    assert est.rto_s == 2.0


def test_karns_rule_ignores_retried_samples() -> None:
    est = RttEstimator()
    est.observe(0.1, now=0.0)
    before = (est.srtt_s, est.rttvar_s, est.rto_s, est.samples)
    assert not est.observe(5.0, now=1.0, retried=True)
    assert (est.srtt_s, est.rttvar_s, est.rto_s, est.samples) == before


def test_timeout_doubles_rto_up_to_max() -> None:
    est = RttEstimator(max_rto_s=3.0)
    est.on_timeout()
    assert est.rto_s == 2.0
    est.on_timeout()
    assert est.rto_s == 3.0


def test_bandwidth_median_resists_an_outlier_and_goes_stale() -> None:
    bw = BandwidthEstimator(window_s=10.0)
    for i, bps in enumerate([1e6, 1.1e6, 50e6, 0.9e6, 1e6]):
        bw.observe(bps, 1.0, now=float(i))
    assert bw.estimate(5.0) == 1e6
    # all samples older than the window: the last estimate stays (stale), it does not vanish
    assert bw.estimate(100.0) == 1e6
    assert not bw.observe(1000, 0.0, now=101.0)


def test_network_estimator_splits_call_time_into_rtt_and_bandwidth() -> None:
    est = NetworkEstimator(prior_rtt_s=0.5, prior_bandwidth_bps=1.0, min_rto_s=0.001)
    snap = est.snapshot(0.0)
    assert (snap.rtt_s, snap.bandwidth_bps, snap.rtt_age_s) == (0.5, 1.0, None)
    # a light probe: 20 ms of pure propagation
    est.observe_call(round_trip_s=0.020, bytes_on_wire=0, now=1.0)
    # a heavy call: 100_000 bytes, 5 ms on the server, 20 ms propagation, 80 ms transfer -> 10 Mbit/s
    est.observe_call(round_trip_s=0.105, server_compute_s=0.005, bytes_on_wire=100_000, now=2.0)
    snap = est.snapshot(2.0)
    assert snap.bandwidth_bps == pytest.approx(10e6)
    assert snap.base_rtt_s == pytest.approx(0.020)
    # the heavy call's rtt sample is network time minus transfer at the estimate: 20 ms again
    assert snap.rtt_s == pytest.approx(0.020)
    assert snap.rtt_samples == 2
    assert snap.rtt_age_s == 0.0 and snap.bandwidth_age_s == 0.0
    assert est.snapshot(10.0).rtt_age_s == 8.0


def test_network_estimator_drops_retried_calls_and_unmeasurable_transfers() -> None:
    est = NetworkEstimator(min_transfer_s=0.001)
    est.observe_call(round_trip_s=3.0, bytes_on_wire=0, retried=True, now=0.0)
    assert est.snapshot(0.0).rtt_samples == 0
    est.observe_call(round_trip_s=0.010, bytes_on_wire=0, now=1.0)
    # loopback-fast transfer (0.2 ms beyond the baseline) says nothing about bandwidth
    est.observe_call(round_trip_s=0.0102, bytes_on_wire=5000, now=2.0)
    assert est.snapshot(2.0).bandwidth_age_s is None


CAP_BPS = 1e6
HEAVY_BYTES = 32 * 1024
HEAVY_TRANSFER_S = HEAVY_BYTES * 8 / CAP_BPS  # 0.262144 s at 1 Mbit/s


def _heavy_call(est: NetworkEstimator, now: float, base_s: float = 0.020) -> None:
    est.observe_call(
        round_trip_s=base_s + HEAVY_TRANSFER_S + 0.004, server_compute_s=0.004, bytes_on_wire=HEAVY_BYTES, now=now
    )


def test_a_probe_that_queued_behind_a_large_request_does_not_become_the_baseline() -> None:
    # engineer D's case: the clean baseline (20 ms) has aged out of the 10 s window; the next probe
    # went out while a 32 KiB request filled a 1 Mbit/s bottleneck and read 0.2 s of queueing
    est = NetworkEstimator(window_s=10.0)
    est.observe_call(round_trip_s=0.020, bytes_on_wire=0, now=0.0)
    rtt_before = (est.rtt.srtt_s, est.rtt.samples)
    est.observe_call(round_trip_s=0.200, bytes_on_wire=0, shared_link=True, now=40.0)
    assert est.snapshot(40.0).base_rtt_s == pytest.approx(0.020)
    assert (est.rtt.srtt_s, est.rtt.samples) == rtt_before  # queueing is no RTT sample either
    assert est.base_age_s(40.0) == 40.0  # still stale: the runtime keeps looking for a clean probe
    for i in range(4):
        _heavy_call(est, now=40.5 + i)
    assert est.snapshot(44.0).bandwidth_bps == pytest.approx(CAP_BPS)


def test_without_the_shared_flag_that_probe_would_make_the_cap_read_three_times_too_high() -> None:
    # the failure the flag prevents, and the reason a clean sample may still raise the baseline:
    # after the window a higher clean sample is a real path change and must be followed
    est = NetworkEstimator(window_s=10.0)
    est.observe_call(round_trip_s=0.020, bytes_on_wire=0, now=0.0)
    est.observe_call(round_trip_s=0.200, bytes_on_wire=0, now=40.0)
    assert est.snapshot(40.0).base_rtt_s == pytest.approx(0.200)
    _heavy_call(est, now=40.5)
    assert est.snapshot(40.5).bandwidth_bps > 3 * CAP_BPS  # 0.262 s of transfer read as 0.082 s


def test_a_shared_light_call_may_lower_the_baseline_but_never_set_it() -> None:
    est = NetworkEstimator(window_s=10.0)
    est.observe_call(round_trip_s=0.005, bytes_on_wire=0, shared_link=True, now=0.0)
    snap = est.snapshot(0.0)
    assert snap.base_rtt_s is None and snap.rtt_samples == 0 and est.base_age_s(0.0) is None
    est.observe_call(round_trip_s=0.030, bytes_on_wire=0, now=1.0)
    # queueing only adds time, so a shared sample below the baseline is still a valid upper bound
    est.observe_call(round_trip_s=0.020, bytes_on_wire=0, shared_link=True, now=2.0)
    assert est.snapshot(2.0).base_rtt_s == pytest.approx(0.020)
    est.observe_call(round_trip_s=0.025, bytes_on_wire=0, shared_link=True, now=3.0)
    assert est.snapshot(3.0).base_rtt_s == pytest.approx(0.020)


def test_a_heavy_call_that_shared_the_link_keeps_its_bandwidth_sample() -> None:
    # two 32 KiB calls at once on a 1 Mbit/s link each take twice as long: that is the bandwidth
    # the next request of a stream will get, so the sample is kept
    est = NetworkEstimator(window_s=10.0)
    est.observe_call(round_trip_s=0.020, bytes_on_wire=0, now=0.0)
    est.observe_call(round_trip_s=0.020 + 2 * HEAVY_TRANSFER_S, bytes_on_wire=HEAVY_BYTES, shared_link=True, now=1.0)
    assert est.snapshot(1.0).bandwidth_bps == pytest.approx(CAP_BPS / 2)


def _fill(estimator: BandwidthEstimator, bps: float, count: int, start: float) -> float:
    """``count`` one-second transfers at ``bps``, a second apart; returns the time after them."""
    now = start
    for _ in range(count):
        now += 1.0
        estimator.observe(bps, 1.0, now=now)
    return now


def test_a_bandwidth_collapse_is_followed_within_three_samples_with_the_defaults() -> None:
    estimator = BandwidthEstimator()
    now = _fill(estimator, 10e6, 12, 0.0)
    assert estimator.estimate(now) == 10e6
    now = _fill(estimator, 1e6, 2, now)
    assert estimator.estimate(now) == 10e6, "two low samples are outliers to the median"
    now = _fill(estimator, 1e6, 1, now)
    assert estimator.estimate(now) == 1e6


def test_a_recovery_is_followed_as_quickly_as_a_collapse() -> None:
    estimator = BandwidthEstimator()
    now = _fill(estimator, 1e6, 12, 0.0)
    now = _fill(estimator, 20e6, 3, now)
    assert estimator.estimate(now) == 20e6


def test_samples_on_both_sides_of_the_median_are_noise_not_a_shift() -> None:
    estimator = BandwidthEstimator()
    now = _fill(estimator, 10e6, 12, 0.0)
    for bps in (1e6, 50e6, 1e6, 50e6):
        now = _fill(estimator, bps, 1, now)
    assert estimator.estimate(now) == 10e6


def test_a_shift_smaller_than_the_factor_moves_only_the_median() -> None:
    estimator = BandwidthEstimator()
    now = _fill(estimator, 10e6, 12, 0.0)
    now = _fill(estimator, 6e6, 3, now)
    assert estimator.estimate(now) == 10e6
