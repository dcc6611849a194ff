"""Live correction of the plan's costs: how the machines run now against their profiles.

Pure: no I/O, no threads; every method takes ``now`` from the caller's clock.

A profile describes a machine at the moment it was taken; a Pi that throttles at 80 C or a tail
server loaded by many devices is a different machine an hour later. The runtime times every
part it runs (each head, the local and the fallback model) and the server reports each tail's
compute time (``splitinf_compute_ns``) and, where it offers it, the time the request queued
before its tail ran (``splitinf_queue_ns``). ``CostCorrector`` turns these into a
:class:`splitinf.contract.plan.Correction`, which the one decision rule
(:func:`splitinf.contract.plan.choose_option`) applies to every option.

- A sample is the ratio ``(observed + floor) / (profiled + floor)``. The floor (1 ms by default)
  keeps parts shorter than timer and scheduler noise (a full-offload head is a copy) from
  swinging the ratio, while a 10 ms head that takes 60 ms reads ~5.5. A factor is the median of
  the samples of the last ``window_s`` seconds, with a level-shift detector
  (:class:`WindowedMedian`): three samples all 1.5x away from the older median replace it, so a
  throttled Pi is followed within a few requests, and one slow request (a GC pause) moves nothing.
  A value counts once three samples of the window hold it up: a device's first, slow request
  (allocations, a cold cache) does not send it off an option it would then not try again.
- Heads and tails are followed per split option (two tails of one server are not slowed alike:
  a 1 ms tail and a 50 ms one), and per kind over every option: an option the device has not
  run within the window is priced with its kind's factor, since a throttled Pi slows every
  head and a busy server every tail. The local and the fallback model are one each.
- The server's queue time adds, it does not scale: a request waiting 50 ms behind other devices'
  requests waits 50 ms whatever its tail costs. It is smoothed the same way, in seconds, per
  option: a server queues per model (a tail many devices use queues, a light one need not), so
  an option not run within the window is priced without a queue and gets measured when tried.
- Windows are time-based (a Pi sends few requests). A part the device stops using (a tail on a
  loaded server it now avoids) gets no samples: once its newest sample is older than the window
  it takes its kind's factor, and a kind's factor without fresh samples relaxes back to the
  profile over ``relax_s`` (geometrically), so the device tries the part again and measures
  whether the load has passed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from splitinf.contract.plan import AS_PROFILED, Correction
from splitinf.edge.estimate import WindowedMedian

__all__ = ["PARTS", "CorrectionConfig", "CostCorrector"]

PARTS = ("head", "tail", "local", "fallback")


@dataclass(frozen=True)
class CorrectionConfig:
    window_s: float = 30.0
    max_samples: int = 15
    shift_samples: int = 3
    shift_factor: float = 1.5
    min_samples: int = 3  # a value counts once this many samples of the window hold it up
    floor_s: float = 0.001  # added to observed and profiled time: shorter parts are timing noise
    relax_s: float = 30.0  # once stale, back to the profile over this long
    min_factor: float = 0.05
    max_factor: float = 100.0
    enabled: bool = True  # False: decide on the profiles as planned (a static plan, for comparison)

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and self.relax_s > 0 and self.floor_s >= 0):
            raise ValueError("window_s and relax_s must be > 0, floor_s >= 0")
        if not 0 < self.min_factor <= 1 <= self.max_factor:
            raise ValueError("need 0 < min_factor <= 1 <= max_factor")
        if not 1 <= self.min_samples <= self.max_samples:
            raise ValueError("need 1 <= min_samples <= max_samples")


class _Follower:
    """One followed quantity: a :class:`WindowedMedian` whose estimate counts once it rests on
    ``min_samples`` samples of the window (one slow request, or the first one, moves nothing)."""

    def __init__(self, config: CorrectionConfig) -> None:
        self.samples = WindowedMedian(
            window_s=config.window_s,
            max_samples=config.max_samples,
            shift_samples=config.shift_samples,
            shift_factor=config.shift_factor,
        )
        self.config = config
        self.value: float | None = None  # the last estimate that counted, and when
        self.at = -math.inf

    def add(self, value: float, now: float) -> None:
        self.samples.add(value, now)
        if self.samples.count(now) >= self.config.min_samples:
            self.value, self.at = self.samples.estimate(now), now

    def staleness(self, now: float) -> float:
        """0 while the value rests on samples in the window, rising to 1 over ``relax_s`` after."""
        over = now - self.at - self.config.window_s
        return min(max(over / self.config.relax_s, 0.0), 1.0)


class CostCorrector:
    """Smoothed observed/profiled ratios per kind of part and per split option, and the server's queue time."""

    def __init__(self, config: CorrectionConfig | None = None) -> None:
        self.config = config or CorrectionConfig()
        # (part, option id) -> ratios; option id None: the kind's, over all its options
        self._ratios: dict[tuple[str, str | None], _Follower] = {}
        self._queue: dict[str | None, _Follower] = {}  # by option id

    def observe(
        self, part: str, observed_s: float, profiled_s: float, now: float, option_id: str | None = None
    ) -> bool:
        """One run of a part (of split option ``option_id`` for a head or a tail); False (ignored)
        when there is no profile to compare with."""
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}; expected one of {PARTS}")
        if not (profiled_s > 0 and math.isfinite(observed_s) and observed_s >= 0):
            return False
        floor = self.config.floor_s
        ratio = min(max((observed_s + floor) / (profiled_s + floor), self.config.min_factor), self.config.max_factor)
        keys = (
            [(part, None)] if option_id is None or part not in ("head", "tail") else [(part, None), (part, option_id)]
        )
        for key in keys:
            self._ratios.setdefault(key, _Follower(self.config)).add(ratio, now)
        return True

    def observe_queue(self, queue_s: float, now: float, option_id: str) -> None:
        """The time a request of split option ``option_id`` waited on the server before its tail
        ran, as the server reports it."""
        if math.isfinite(queue_s) and queue_s >= 0:
            self._queue.setdefault(option_id, _Follower(self.config)).add(queue_s, now)

    def factor(self, part: str, now: float) -> float:
        """The kind's factor (all options of a head or a tail), relaxed towards 1 once stale."""
        follower = self._ratios.get((part, None))
        if follower is None or follower.value is None:
            return 1.0
        return float(follower.value ** (1.0 - follower.staleness(now)))

    @staticmethod
    def _fresh(by_option: dict[str | None, _Follower], now: float) -> dict[str, float]:
        """Per option, the values resting on samples in the window (the others take the value over all)."""
        return {
            option_id: follower.value
            for option_id, follower in by_option.items()
            if option_id is not None and follower.value is not None and follower.staleness(now) == 0
        }

    def _by_option(self, part: str) -> dict[str | None, _Follower]:
        return {option_id: follower for (kind, option_id), follower in self._ratios.items() if kind == part}

    def correction(self, now: float) -> Correction:
        if not self.config.enabled:
            return AS_PROFILED
        return Correction(
            head=self.factor("head", now),
            tail=self.factor("tail", now),
            local=self.factor("local", now),
            fallback=self.factor("fallback", now),
            heads=self._fresh(self._by_option("head"), now),
            tails=self._fresh(self._by_option("tail"), now),
            queues=self._fresh(self._queue, now),
        )
