"""Network estimates from the device's own traffic: round-trip time and bandwidth.

Pure: no I/O, no threads; every method takes ``now`` from the caller's clock.

A remote call's round trip is split into the server's compute time (the server
reports it) and the network time. The network time is modelled as

    network_s = rtt_s + bits / bandwidth_bps

- ``RttEstimator`` is RFC 6298 (SRTT, RTTVAR, RTO; alpha=1/8, beta=1/4, K=4) with
  Karn's rule: a sample from a call that was retried is ambiguous and is dropped.
- ``BandwidthEstimator`` takes the median of recent samples within a time window,
  so one outlier (a GC pause, a retransmission) cannot swing it.
- ``NetworkEstimator`` ties them together: light calls (health probes, tiny
  requests) give a windowed-minimum propagation baseline; heavy calls give a
  bandwidth sample ``bits / (network_s - baseline)``, and their RTT sample is the
  network time minus the transfer time at the current bandwidth estimate.

Why the baseline only takes light calls that had the link to themselves
------------------------------------------------------------------------
A minimum filter shrugs off a high sample as long as one clean sample is in its
window. When the window has emptied (a device that sent nothing light for a
while) the next light sample becomes the baseline, however high it is. On a
rate-capped link the device's own large request sits in the bottleneck queue,
and a probe sent behind it measures that queue, not the path: at 1 Mbit/s a
probe behind 24 KiB reads ~0.2 s, every later 32 KiB call then shows a transfer
time of ``0.26 - 0.2`` s, and the estimate reads about 4x the cap.

The caller knows what this estimator cannot: whether another of its calls was
on the link while this one ran (``shared_link``). Such a light call is an upper
bound on the path delay, so it may lower the baseline but never raise or set it,
and it is no RTT sample. With nothing clean in the window the last clean
baseline stays in use (propagation delay changes far less often than the load).

Rejected alternatives. A longer minimum window (BBR's 10 s ``min_rtt``) only
moves the moment the window empties, and is slower to follow a real path change.
A bytes-versus-time regression (slope ``1/bandwidth``, intercept the baseline)
needs calls of several sizes; a device sends one cut's size plus its light
calls, so the fit's intercept rests on the same light calls and a queued probe
biases it just the same. Heavy calls that shared the link keep their bandwidth
sample: sharing is what the next request will see too (``infer_stream`` keeps
several in flight), and dropping them would leave a busy stream with no samples.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

__all__ = [
    "BandwidthEstimator",
    "Estimates",
    "NetworkEstimator",
    "RttEstimator",
    "WindowedMedian",
]


class RttEstimator:
    """RFC 6298 retransmission-timeout computation, in seconds."""

    ALPHA = 1 / 8
    BETA = 1 / 4
    K = 4

    def __init__(
        self,
        *,
        initial_rto_s: float = 1.0,
        min_rto_s: float = 0.2,
        max_rto_s: float = 60.0,
        granularity_s: float = 0.001,
    ) -> None:
        if not 0 < min_rto_s <= max_rto_s:
            raise ValueError(f"need 0 < min_rto_s <= max_rto_s, got {min_rto_s} and {max_rto_s}")
        self.min_rto_s = min_rto_s
        self.max_rto_s = max_rto_s
        self.granularity_s = granularity_s
        self.srtt_s: float | None = None
        self.rttvar_s: float | None = None
        self._rto_s = self._clamp(initial_rto_s)
        self.samples = 0
        self.last_sample_at: float | None = None

    def _clamp(self, rto: float) -> float:
        return min(max(rto, self.min_rto_s), self.max_rto_s)

    @property
    def rto_s(self) -> float:
        return self._rto_s

    def observe(self, sample_s: float, *, now: float, retried: bool = False) -> bool:
        """Feed one measured RTT; returns whether it was used (Karn's rule drops retried calls)."""
        if retried or not math.isfinite(sample_s) or sample_s < 0:
            return False
        if self.srtt_s is None or self.rttvar_s is None:
            # RFC 6298 (2.2): the first measurement.
            self.srtt_s = sample_s
            self.rttvar_s = sample_s / 2
        else:
            # RFC 6298 (2.3): RTTVAR is updated with the old SRTT, then SRTT.
            self.rttvar_s = (1 - self.BETA) * self.rttvar_s + self.BETA * abs(self.srtt_s - sample_s)
            self.srtt_s = (1 - self.ALPHA) * self.srtt_s + self.ALPHA * sample_s
        self._rto_s = self._clamp(self.srtt_s + max(self.granularity_s, self.K * self.rttvar_s))
        self.samples += 1
        self.last_sample_at = now
        return True

    def on_timeout(self) -> None:
        """RFC 6298 (5.5): back the timer off (double it, up to the maximum)."""
        self._rto_s = self._clamp(self._rto_s * 2)


class WindowedMedian:
    """Median of the samples of the last ``window_s`` seconds (at most ``max_samples``).

    The median ignores one or two outliers, but on its own it would follow a real change only
    once the new samples are the majority of the window (up to 8 of 15). So a level shift is
    detected: when the newest ``shift_samples`` samples all lie more than ``shift_factor``
    times away from the older samples' median, on the same side, the older samples describe a
    machine or link that is gone and are dropped. When every sample is older than the window
    the last estimate stays (stale: ``last_sample_at`` says how stale).
    """

    def __init__(
        self,
        *,
        window_s: float = 30.0,
        max_samples: int = 15,
        shift_samples: int = 3,
        shift_factor: float = 2.0,
    ) -> None:
        if window_s <= 0 or max_samples < 1:
            raise ValueError("window_s must be > 0 and max_samples >= 1")
        if not 1 <= shift_samples < max_samples or shift_factor <= 1:
            raise ValueError("shift_samples must be in 1..max_samples-1 and shift_factor > 1")
        self.window_s = window_s
        self.shift_samples = shift_samples
        self.shift_factor = shift_factor
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._last: float | None = None
        self.last_sample_at: float | None = None

    def add(self, value: float, now: float) -> None:
        self._samples.append((now, value))
        self._forget_before_a_level_shift(now)
        self.last_sample_at = now
        self._last = self.estimate(now)

    def _forget_before_a_level_shift(self, now: float) -> None:
        in_window = [v for at, v in self._samples if now - at <= self.window_s]
        newest, older = in_window[-self.shift_samples :], in_window[: -self.shift_samples]
        if not older:
            return
        reference = statistics.median(older)
        if all(v * self.shift_factor < reference for v in newest) or all(
            v > reference * self.shift_factor for v in newest
        ):
            kept = list(self._samples)[-self.shift_samples :]
            self._samples.clear()
            self._samples.extend(kept)

    def count(self, now: float) -> int:
        """How many samples are in the window."""
        return sum(1 for at, _ in self._samples if now - at <= self.window_s)

    def estimate(self, now: float) -> float | None:
        """The median of the samples in the window; the last estimate when all are older (stale)."""
        recent = [v for at, v in self._samples if now - at <= self.window_s]
        if not recent:
            return self._last
        return float(statistics.median(recent))


class BandwidthEstimator(WindowedMedian):
    """Bandwidth samples (bits over transfer seconds) smoothed by :class:`WindowedMedian`."""

    def observe(self, bits: float, transfer_s: float, *, now: float) -> bool:
        if bits <= 0 or transfer_s <= 0 or not math.isfinite(transfer_s):
            return False
        self.add(bits / transfer_s, now)
        return True


class _WindowedMin:
    """Minimum of the values seen in the last ``window_s`` seconds (monotone deque)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, float]] = deque()
        self._last: float | None = None

    def add(self, value: float, now: float) -> None:
        while self._items and self._items[-1][1] >= value:
            self._items.pop()
        self._items.append((now, value))
        self._expire(now)
        self._last = self._items[0][1]

    def _expire(self, now: float) -> None:
        while len(self._items) > 1 and now - self._items[0][0] > self.window_s:
            self._items.popleft()

    def value(self, now: float) -> float | None:
        self._expire(now)
        if self._items and now - self._items[0][0] <= self.window_s:
            return self._items[0][1]
        return self._last


@dataclass(frozen=True)
class Estimates:
    """A snapshot for the policy engine; priors stand in until measurements arrive."""

    rtt_s: float
    rttvar_s: float
    rto_s: float
    bandwidth_bps: float
    base_rtt_s: float | None
    rtt_age_s: float | None  # None: never measured (the prior is in use)
    bandwidth_age_s: float | None
    rtt_samples: int


class NetworkEstimator:
    """RTT and bandwidth from remote calls and probes; the runtime's single source of estimates."""

    def __init__(
        self,
        *,
        prior_rtt_s: float = 0.05,
        prior_bandwidth_bps: float = 10e6,
        window_s: float = 30.0,
        light_bytes: int = 1024,
        min_transfer_s: float = 0.001,
        min_rto_s: float = 0.2,
        max_rto_s: float = 60.0,
    ) -> None:
        self.prior_rtt_s = prior_rtt_s
        self.prior_bandwidth_bps = prior_bandwidth_bps
        self.light_bytes = light_bytes
        self.min_transfer_s = min_transfer_s
        self.rtt = RttEstimator(min_rto_s=min_rto_s, max_rto_s=max_rto_s)
        self.bandwidth = BandwidthEstimator(window_s=window_s)
        self._base = _WindowedMin(window_s)
        self._base_seen_at: float | None = None

    def observe_call(
        self,
        *,
        round_trip_s: float,
        server_compute_s: float = 0.0,
        bytes_on_wire: int = 0,
        retried: bool = False,
        shared_link: bool = False,
        now: float,
    ) -> None:
        """Feed one completed call: ``bytes_on_wire`` is request plus response payload.

        ``shared_link``: another call of this device was on the link while this one ran, so a
        light call may have queued behind its bytes (see the module docstring).
        """
        if retried:
            return  # Karn's rule: which attempt did this answer belong to? Unknown, so no sample.
        network_s = max(round_trip_s - max(server_compute_s, 0.0), 0.0)
        if bytes_on_wire <= self.light_bytes:
            if shared_link:
                # an upper bound on the path delay: it may lower the baseline, never raise or set it
                base = self._base.value(now)
                if base is not None and network_s < base:
                    self._base.add(network_s, now)
                    self._base_seen_at = now
                return
            self._base.add(network_s, now)
            self._base_seen_at = now
            self.rtt.observe(network_s, now=now)
            return
        bits = bytes_on_wire * 8.0
        base = self._base.value(now)
        if base is not None:
            transfer_s = network_s - base
            if transfer_s >= self.min_transfer_s:
                self.bandwidth.observe(bits, transfer_s, now=now)
        bandwidth = self.bandwidth.estimate(now)
        transfer_estimate = bits / bandwidth if bandwidth else 0.0
        self.rtt.observe(max(network_s - transfer_estimate, 0.0), now=now)

    def on_timeout(self) -> None:
        self.rtt.on_timeout()

    def base_age_s(self, now: float) -> float | None:
        return None if self._base_seen_at is None else now - self._base_seen_at

    def snapshot(self, now: float) -> Estimates:
        rtt = self.rtt
        bandwidth = self.bandwidth.estimate(now)
        return Estimates(
            rtt_s=rtt.srtt_s if rtt.srtt_s is not None else self.prior_rtt_s,
            rttvar_s=rtt.rttvar_s if rtt.rttvar_s is not None else self.prior_rtt_s / 2,
            rto_s=rtt.rto_s,
            bandwidth_bps=bandwidth if bandwidth is not None else self.prior_bandwidth_bps,
            base_rtt_s=self._base.value(now),
            rtt_age_s=None if rtt.last_sample_at is None else now - rtt.last_sample_at,
            bandwidth_age_s=(None if self.bandwidth.last_sample_at is None else now - self.bandwidth.last_sample_at),
            rtt_samples=rtt.samples,
        )
