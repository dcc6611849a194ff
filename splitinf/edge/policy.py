"""The device's policy engine: which option answers the next request.

A pure state machine: no threads, no I/O, time from an injectable clock. The
runtime asks ``decide()`` before each request, reports what happened with
``record()`` / ``record_probe()``, and logs the returned ``Event``s.

Modes (the breaker state in brackets)::

    SPLIT [closed]    --failure / breaker trip / predicted over budget--> FALLBACK [open]
    FALLBACK [open]   --open period over, min dwell, flap limit allows--> PROBING [half-open]
    PROBING           --a probe fails, or the slow-probe rate is high---> FALLBACK (open period grows)
    PROBING           --enough healthy probes over the stabilisation
                        period, min dwell, a split option fits---------> SPLIT

- Falling back is immediate; returning is slow on purpose: an open period that
  doubles on repeated trips (capped), then a stabilisation period of healthy
  probes, a minimum dwell in each mode and a limit on returns per time window,
  so a flapping link cannot make the device oscillate.
- The breaker's window is time-based (seconds), because a device sends few
  requests: it trips when at least ``min_calls`` calls in the window have a
  failure rate or a slow-call rate (slower than the split-mode budget) at or
  above the thresholds, or after ``trip_after_failures`` consecutive failures.
- Half-open, a failed probe trips at once, but one slow probe does not: a
  restarted server's first answer (reconnect, warm-up) is slow while its
  neighbours are not. Slow probes trip when their rate over this half-open
  period reaches ``slow_call_rate`` once there are ``min_calls`` of them, as
  resilience4j's ``slowCallRateThreshold`` and ``minimumNumberOfCalls`` do;
  returning needs ``half_open_probes`` fast probes and that rate below the threshold.
- The option for a request is the plan's rule, :func:`splitinf.contract.plan.choose_option`
  (the most accurate option expected to meet the budget, ties to the faster) at the
  current estimates; the fallback when none is expected to. In FALLBACK and PROBING only
  on-device options are eligible. An option whose server answered with the
  wrong model is quarantined for a while, not retried.
- Shedding a shared server's load. Every device on one tail server sees the same queue (the
  server reports it, ``splitinf_queue_ns``); deciding by one rule on one figure, all would leave
  the queued option at the same request, leave the server idle, and come back together once
  their figures go stale. This is the herd behaviour of load balancing on shared, delayed load
  information (Mitzenmacher, "How useful is old information?", IEEE TPDS 2000), the
  synchronisation that randomisation breaks in RED's drops and in routing timers (Floyd and
  Jacobson, 1993 and 1994). So each device draws once, from an RNG seeded with ``spread_seed``
  (a device's setting, else the OS's entropy), a :class:`Spread`: a margin in
  ``[0, spread_margin]`` and a patience in ``[0, spread_patience_s]``. When the queue is what makes
  another option faster (with every queue taken out the rule would keep the current option), the
  device leaves only for an option expected faster by more than its margin, and only once that
  has held for its patience. Devices leave one by one, at different queue levels and times, and
  those still on the queued option see it shorten before all have left; a device that left
  returns when its figure for the queue goes stale (``splitinf.edge.correction``), and the
  departures' spread spreads the returns. Any other reason to move (the device's own head, its
  link, the budget, accuracy) acts at once, as the rule says: a device alone on an idle server
  sees no queue and decides exactly by the rule, and a spread of 0 is the rule unchanged.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from splitinf.contract.plan import (
    AS_PROFILED,
    DEFAULT_BUDGET_S,
    Correction,
    Option,
    Plan,
    choose_option,
    expected_latency,
)
from splitinf.edge.estimate import Estimates
from splitinf.errors import ConfigError, PlanError

__all__ = [
    "BreakerState",
    "Decision",
    "Event",
    "Mode",
    "Policy",
    "PolicyConfig",
    "Spread",
]


class Mode(str, enum.Enum):
    SPLIT = "split"
    FALLBACK = "fallback"  # answering on the device (the fallback, or the local option when it fits)
    PROBING = "probing"


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class PolicyConfig:
    budget_s: float = DEFAULT_BUDGET_S  # split-mode budget: a call slower than this counts as slow
    window_s: float = 30.0
    min_calls: int = 3
    failure_rate: float = 0.5
    slow_call_rate: float = 0.5
    trip_after_failures: int = 1  # consecutive failures that trip at once ("fall back at once")
    open_s: float = 5.0
    open_multiplier: float = 2.0
    open_max_s: float = 120.0
    half_open_probes: int = 3  # fast (within budget) probes needed before returning to SPLIT
    probe_interval_s: float = 1.0
    stabilisation_s: float = 10.0
    min_dwell_s: float = 5.0
    flap_window_s: float = 300.0
    flap_limit: int = 4  # returns to SPLIT allowed per flap window
    quarantine_s: float = 60.0
    spread_margin: float = 0.2  # the largest margin a device draws for leaving a queued option
    spread_patience_s: float = 5.0  # the longest patience it draws (see Spread)

    def __post_init__(self) -> None:
        positive = ("budget_s", "window_s", "open_s", "open_max_s", "probe_interval_s", "flap_window_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"policy.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("stabilisation_s", "min_dwell_s", "quarantine_s", "spread_margin", "spread_patience_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"policy.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("failure_rate", "slow_call_rate"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"policy.{name} must be in (0, 1], got {getattr(self, name)!r}")
        for name in ("min_calls", "trip_after_failures", "half_open_probes", "flap_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"policy.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.open_multiplier < 1:
            raise ConfigError(f"policy.open_multiplier must be >= 1, got {self.open_multiplier!r}")
        if self.open_max_s < self.open_s:
            raise ConfigError("policy.open_max_s must be >= policy.open_s")


@dataclass(frozen=True)
class Spread:
    """One device's own draws for shedding a shared server's load (see the module docstring):
    it leaves an option the server's queue slows only for one expected faster by more than
    ``margin`` (a fraction), and only once that has held for ``patience_s`` seconds."""

    margin: float = 0.0
    patience_s: float = 0.0

    @classmethod
    def draw(cls, config: PolicyConfig, seed: int | None = None) -> Spread:
        """Uniform in ``[0, config.spread_margin]`` and ``[0, config.spread_patience_s]``; the same
        seed gives the same draws, None the OS's entropy (each device its own). numpy's generator
        hashes the seed (SeedSequence), so devices numbered 3 and 4 draw unrelated values
        (``random.Random(3)`` and ``(4)`` start within 1% of each other)."""
        rng = np.random.default_rng(seed)
        margin, patience = rng.uniform(0.0, 1.0, size=2)
        return cls(float(margin) * config.spread_margin, float(patience) * config.spread_patience_s)

    def to_json(self) -> dict[str, float]:
        return {"margin": round(self.margin, 4), "patience_s": round(self.patience_s, 3)}


@dataclass(frozen=True)
class Event:
    """A transition: ``kind`` is "mode" (old/new are modes) or "quarantine" (old/new: option id, "")."""

    at: float
    kind: str
    old: str
    new: str
    reason: str
    breaker: BreakerState
    open_s: float = 0.0

    def as_log_fields(self) -> dict[str, object]:
        return {
            "event": f"{self.kind}_change",
            "from": self.old,
            "to": self.new,
            "reason": self.reason,
            "breaker": self.breaker.value,
            "open_s": round(self.open_s, 3),
        }


@dataclass(frozen=True)
class Decision:
    option: Option
    mode: Mode
    events: tuple[Event, ...] = ()

    @property
    def remote(self) -> bool:
        return self.option.is_remote


class Policy:
    def __init__(
        self,
        plan: Plan,
        config: PolicyConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        spread_seed: int | None = None,
    ):
        self.plan = plan
        self.config = config or PolicyConfig()
        self.clock = clock
        self.spread = Spread.draw(self.config, spread_seed)
        fallback = plan.fallback
        if fallback is None:
            raise PlanError("the plan has no fallback option; the device needs one to answer when the network fails")
        self.fallback: Option = fallback
        self.on_device = tuple(o for o in plan.options if not o.is_remote)
        now = clock()
        self._mode = Mode.SPLIT
        self._mode_since = now
        self._open_until = now
        self._open_s = 0.0
        self._trips = 0
        self._consecutive_failures = 0
        self._calls: deque[tuple[float, bool, bool]] = deque()  # (at, failed, slow)
        self._probe_successes = 0
        self._probe_slow: list[bool] = []  # this half-open period's probes: slow or not
        self._probe_in_flight = False
        self._last_probe_at = -math.inf
        self._split_entries: deque[float] = deque()
        self._quarantine: dict[str, float] = {}
        self._current: str | None = None  # the option decided last
        self._shedding_since: float | None = None  # since when a queue has made another option worth taking

    # -- state -------------------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def breaker(self) -> BreakerState:
        if self._mode is Mode.PROBING:
            return BreakerState.HALF_OPEN
        if self._mode is Mode.FALLBACK and self.clock() < self._open_until:
            return BreakerState.OPEN
        return BreakerState.CLOSED

    def quarantined(self, now: float | None = None) -> set[str]:
        now = self.clock() if now is None else now
        return {option_id for option_id, until in self._quarantine.items() if now < until}

    def usable_split_options(self, now: float | None = None) -> tuple[Option, ...]:
        bad = self.quarantined(now)
        return tuple(o for o in self.plan.split_options if o.id not in bad)

    def _transition(self, new: Mode, reason: str, now: float) -> Event:
        old = self._mode
        self._mode = new
        self._mode_since = now
        if new is Mode.SPLIT:
            self._split_entries.append(now)
            self._calls.clear()
            self._consecutive_failures = 0
        if new is Mode.PROBING:
            self._probe_successes = 0
            self._probe_slow = []
            self._probe_in_flight = False
            self._last_probe_at = -math.inf
        return Event(
            now, "mode", old.value, new.value, reason, self.breaker, self._open_s if new is Mode.FALLBACK else 0
        )

    def _trip(self, reason: str, now: float, *, grow: bool = True) -> Event:
        if grow:
            # A long healthy stretch in SPLIT forgives earlier trips.
            if self._mode is Mode.SPLIT and now - self._mode_since >= self.config.open_max_s:
                self._trips = 0
            self._trips += 1
            self._open_s = min(
                self.config.open_s * self.config.open_multiplier ** (self._trips - 1), self.config.open_max_s
            )
        else:
            self._open_s = self.config.open_s
        self._open_until = now + self._open_s
        return self._transition(Mode.FALLBACK, reason, now)

    def _flap_allowed_at(self) -> float:
        entries = self._split_entries
        if len(entries) < self.config.flap_limit:
            return -math.inf
        return entries[-self.config.flap_limit] + self.config.flap_window_s

    # -- time-driven transitions -------------------------------------------------------------------

    def tick(self, estimates: Estimates | None = None, correction: Correction = AS_PROFILED) -> list[Event]:
        """Transitions that come with time: FALLBACK -> PROBING, PROBING -> SPLIT."""
        now = self.clock()
        cfg = self.config
        events: list[Event] = []
        if self._mode is Mode.FALLBACK:
            ready_at = max(self._open_until, self._mode_since + cfg.min_dwell_s, self._flap_allowed_at())
            if now >= ready_at and self.usable_split_options(now):
                events.append(self._transition(Mode.PROBING, "open_period_over", now))
        if self._mode is Mode.PROBING and estimates is not None:
            stable_for = now - self._mode_since
            if (
                self._probe_successes >= cfg.half_open_probes
                and self._probe_slow_rate() < cfg.slow_call_rate
                and stable_for >= max(cfg.stabilisation_s, cfg.min_dwell_s)
                and now >= self._flap_allowed_at()
            ):
                usable = self.usable_split_options(now)
                if (
                    choose_option(usable, estimates.bandwidth_bps, estimates.rtt_s, cfg.budget_s, correction)
                    is not None
                ):
                    events.append(self._transition(Mode.SPLIT, "stable", now))
                else:
                    events.append(self._trip("predicted_over_budget", now, grow=False))
        return events

    # -- decisions ---------------------------------------------------------------------------------

    def decide(
        self, estimates: Estimates, budget_s: float | None = None, correction: Correction = AS_PROFILED
    ) -> Decision:
        """The option for the next request: the plan's rule at ``estimates``, with the profiled
        times scaled by ``correction`` (what the device has observed of itself and the server),
        the current option held while this device's :class:`Spread` holds it."""
        budget = self.config.budget_s if budget_s is None else budget_s
        events = self.tick(estimates, correction)
        now = self.clock()
        candidates = self.on_device
        if self._mode is Mode.SPLIT:
            usable = self.usable_split_options(now)
            if choose_option(usable, estimates.bandwidth_bps, estimates.rtt_s, budget, correction) is not None:
                candidates = usable + self.on_device
            else:
                reason = "predicted_over_budget" if usable else "no_usable_split_option"
                events.append(self._trip(reason, now, grow=False))
        option = self._choose(candidates, estimates, budget, correction, now) or self.fallback
        self._current = option.id
        return Decision(option, self._mode, tuple(events))

    def _choose(
        self, options: Sequence[Option], estimates: Estimates, budget: float, correction: Correction, now: float
    ) -> Option | None:
        """The rule's pick among ``options``, unless the current option is held by this device's spread."""
        chosen = choose_option(options, estimates.bandwidth_bps, estimates.rtt_s, budget, correction)
        current = next((o for o in options if o.id == self._current), None)
        if chosen is None or current is None or current is chosen[0]:
            self._shedding_since = None
            return None if chosen is None else chosen[0]
        if self._holds(current, chosen, options, estimates, budget, correction, now):
            return current
        self._shedding_since = None
        return chosen[0]

    def _holds(
        self,
        current: Option,
        chosen: tuple[Option, float],
        options: Sequence[Option],
        estimates: Estimates,
        budget: float,
        correction: Correction,
        now: float,
    ) -> bool:
        """Whether the device stays on ``current`` though the rule picks ``chosen``: only when the
        server's queue alone makes the difference, within this device's margin or patience."""
        best, best_s = chosen
        bandwidth, rtt = estimates.bandwidth_bps, estimates.rtt_s
        current_s = expected_latency(current, bandwidth, rtt, correction)
        if current_s > budget or (current.accuracy or 0.0) != (best.accuracy or 0.0):
            return False  # over budget, or less accurate than an option that fits: the rule's reasons
        unqueued = choose_option(options, bandwidth, rtt, budget, dataclasses.replace(correction, queues={}))
        if unqueued is None or unqueued[0] is not current:
            return False  # the other option would be faster without any queue: the device's own head or link
        if current_s <= best_s * (1.0 + self.spread.margin):
            self._shedding_since = None
            return True
        if self._shedding_since is None:
            self._shedding_since = now
        return now - self._shedding_since < self.spread.patience_s

    # -- outcomes ----------------------------------------------------------------------------------

    def record(
        self,
        option_id: str,
        *,
        ok: bool,
        latency_s: float | None = None,
        reason: str = "failure",
        mismatch: bool = False,
    ) -> list[Event]:
        """The outcome of a remote user request decided in SPLIT mode."""
        now = self.clock()
        cfg = self.config
        events: list[Event] = []
        if mismatch:
            # The server answered, but not what the plan expects: a deployment problem, not the network's.
            self._quarantine[option_id] = now + cfg.quarantine_s
            events.append(Event(now, "quarantine", option_id, "", reason, self.breaker))
            return events
        if self._mode is not Mode.SPLIT:
            return events  # a late answer from before the mode changed
        slow = ok and latency_s is not None and latency_s > cfg.budget_s
        self._calls.append((now, not ok, slow))
        while self._calls and now - self._calls[0][0] > cfg.window_s:
            self._calls.popleft()
        self._consecutive_failures = 0 if ok else self._consecutive_failures + 1
        if self._consecutive_failures >= cfg.trip_after_failures:
            events.append(self._trip(reason, now))
            return events
        n = len(self._calls)
        if n >= cfg.min_calls:
            failures = sum(1 for _, failed, _ in self._calls if failed)
            slows = sum(1 for _, _, s in self._calls if s)
            if failures / n >= cfg.failure_rate:
                events.append(self._trip("failure_rate", now))
            elif slows / n >= cfg.slow_call_rate:
                events.append(self._trip("slow_calls", now))
        return events

    def probe_due(self) -> bool:
        """PROBING only, one at a time, at most once per probe interval."""
        now = self.clock()
        return (
            self._mode is Mode.PROBING
            and not self._probe_in_flight
            and now - self._last_probe_at >= self.config.probe_interval_s
        )

    def probe_option(self) -> Option | None:
        """The split option a half-open probe should exercise: the one with the fewest bytes."""
        usable = self.usable_split_options()
        return min(usable, key=lambda o: o.wire_bytes) if usable else None

    def probe_started(self) -> None:
        self._probe_in_flight = True
        self._last_probe_at = self.clock()

    def record_probe(self, *, ok: bool, latency_s: float | None = None, reason: str = "probe_failed") -> list[Event]:
        now = self.clock()
        self._probe_in_flight = False
        if self._mode is not Mode.PROBING:
            return []
        if not ok:
            return [self._trip(reason, now)]
        slow = latency_s is not None and latency_s > self.config.budget_s
        self._probe_slow.append(slow)
        self._probe_successes += not slow
        if len(self._probe_slow) >= self.config.min_calls and self._probe_slow_rate() >= self.config.slow_call_rate:
            return [self._trip("probe_slow", now)]
        return []

    def _probe_slow_rate(self) -> float:
        return sum(self._probe_slow) / len(self._probe_slow) if self._probe_slow else 0.0
