"""The device runtime: head -> policy -> tail server, or a model on the device (fallback or local).

``Runtime`` loads a plan directory (every file of every head, the fallback and the
local model as warm onnxruntime sessions, each file once: :mod:`splitinf.edge.chain`),
asks the policy engine which option answers each request, runs it, and feeds what it
saw back into the estimates and the policy.

Guarantees:

- Inputs are checked (names, dtypes, shapes) before anything runs or is sent.
- Every request is answered exactly once. A remote call carries a deadline equal
  to the budget left after the head; when it fails, stalls or answers wrongly
  the same request is answered by the fallback model, so the answer comes within
  the budget plus the fallback's run time.
- One retry layer: tenacity, only for UNAVAILABLE before any response arrived,
  within the remaining budget, with jittered backoff (the client switches
  gRPC's own retries off). Retried calls give no RTT sample (Karn's rule).
- A tail that is not the plan's (``splitinf.edge.identity``: its metadata or its
  ``splitinf_model_sha256`` differ from the plan's), or that answers with the wrong
  tensors, is never trusted: the request falls back and the option is quarantined.
- Every decision prices the options with their profiled times corrected by what the device
  observes (``splitinf.edge.correction``): each head, the local and fallback models as they
  run here, each tail as the server reports its compute (and queue) time, or as profiled when
  a server (Triton, KServe, MLServer) reports none, so the tail's compute is never counted as
  network time. The correction is in the metrics (``splitinf_device_cost_correction_ratio``) and
  in the JSON event lines: an ``option_change`` line whenever the answering option changes, and
  every mode change, each with this device's ``spread`` (``splitinf.edge.policy.Spread``).
- Probes run on a background thread, one at a time with a short deadline, so they
  never delay a user request: half-open probes (a small request to the tail with
  the fewest bytes) while PROBING, ServerReady probes while not splitting or when
  the RTT baseline is stale. Every call and probe is tracked on the link, so a probe
  that shared it with another call (and may have queued behind its bytes) is not
  taken for the path's round trip.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tenacity

from splitinf.contract.plan import Correction, Option, Plan, expected_latency, load_plan
from splitinf.contract.tensors import ShapeWatch, TensorSpec, check_tensors, shown_shape
from splitinf.edge.chain import SessionPool
from splitinf.edge.config import DeviceConfig
from splitinf.edge.correction import CorrectionConfig, CostCorrector
from splitinf.edge.estimate import NetworkEstimator
from splitinf.edge.identity import TailIdentity
from splitinf.edge.metrics import DeviceMetrics
from splitinf.edge.policy import Event, Mode, Policy
from splitinf.errors import (
    InputError,
    PlanError,
    RemoteMismatchError,
    RemoteRejectedError,
    RemoteTimeoutError,
    RemoteUnavailableError,
    TransportError,
)
from splitinf.ort import Chain, SessionSettings, quiet_run_options

__all__ = ["EVENTS_LOGGER", "LatencyBreakdown", "Runtime", "RuntimeResult", "check_inputs"]

log = logging.getLogger(__name__)
# Mode changes, quarantines and fallbacks, one JSON object per record: a log pipeline parses them as they are.
EVENTS_LOGGER = "splitinf.edge.events"
events_log = logging.getLogger(EVENTS_LOGGER)


@dataclass(frozen=True)
class LatencyBreakdown:
    """Seconds spent per stage; ``network_s`` is the round trip minus ``server_s``, the server's compute
    time plus its queue time where it reports one (``splitinf_queue_ns``).

    The stages add up to ``total_s``: ``wait_s`` is the rest, time in no model and on no answered
    round trip (connecting, a failed or timed-out call, retry backoff, encoding and checking tensors).
    """

    head_s: float = 0.0
    network_s: float = 0.0
    server_s: float = 0.0
    on_device_s: float = 0.0  # the model on the device that answered (the local or the fallback option)
    wait_s: float = 0.0
    total_s: float = 0.0


@dataclass(frozen=True)
class RuntimeResult:
    outputs: dict[str, np.ndarray]
    option_id: str  # the option that produced the outputs
    kind: str  # "split", "local" or "fallback"
    mode: str  # the policy's mode when the request was decided
    latency: LatencyBreakdown
    fallback_reason: str | None = None  # why a remote attempt was abandoned, if one was
    attempted_option: str | None = None  # the split option tried first, when it fell back
    attempts: int = 0  # remote call attempts (retries included)
    bytes_sent: int = 0
    events: tuple[Event, ...] = ()


def check_inputs(specs: Sequence[TensorSpec], inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Inputs as numpy arrays matching the specs exactly, or ``InputError`` naming the problem."""
    if not isinstance(inputs, Mapping):
        raise InputError(f"inputs must be a mapping of tensor name to array, got {type(inputs).__name__}")
    for name, value in inputs.items():
        if not isinstance(value, np.ndarray):
            raise InputError(f"input {name!r} must be a numpy array, got {type(value).__name__}")
    try:
        check_tensors(specs, inputs, InputError, what="input")
    except InputError as exc:
        wanted = ", ".join(f"{s.name!r} {s.dtype} {shown_shape(s.shape)}" for s in specs)
        raise InputError(f"{exc}; the plan takes {wanted} (convert with .astype(), .reshape())") from None
    # not np.ascontiguousarray alone: it makes a scalar input (silero-vad's sample rate) 1-d
    return {spec.name: _contiguous(inputs[spec.name]) for spec in specs}


def _contiguous(array: np.ndarray) -> np.ndarray:
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RemoteTimeoutError):
        return "timeout"
    if isinstance(exc, RemoteUnavailableError):
        return "unavailable"
    if isinstance(exc, RemoteMismatchError):
        return "mismatch"
    if isinstance(exc, RemoteRejectedError):
        return "rejected"
    if isinstance(exc, TransportError):
        return "transport"
    return "error"


class _BudgetSpent(Exception):
    pass


@dataclass
class _LinkUse:
    shared: bool  # another call of this device was on the link at some moment of this one


class _LinkTracker:
    """The device's remote calls and probes on the link, so a probe can tell whether it queued
    behind another call's bytes (the estimator then keeps it out of the RTT baseline)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._started = 0

    @contextmanager
    def use(self) -> Iterator[_LinkUse]:
        with self._lock:
            use = _LinkUse(shared=self._active > 0)
            self._active += 1
            self._started += 1
            seq = self._started
        try:
            yield use
        finally:
            with self._lock:
                self._active -= 1
                use.shared = use.shared or self._started != seq  # another call started meanwhile


class Runtime:
    """The device side of split inference. Thread-safe; close() (or a with-block) stops it."""

    def __init__(
        self,
        plan_dir: str | Path,
        config: DeviceConfig | None = None,
        *,
        client: Any = None,
        clock: Callable[[], float] = time.monotonic,
        background_probes: bool = True,
        metrics: DeviceMetrics | None = None,
        correction: CorrectionConfig | None = None,
    ):

        self.config = config or DeviceConfig()
        self.plan: Plan = load_plan(plan_dir)
        self._shape_watch = ShapeWatch(self.plan.inputs_at)  # inputs at other shapes than planned: warn once
        if self.plan.fallback is None:
            raise PlanError(f"{plan_dir}: the plan has no fallback option; re-run `splitinf plan` with a fallback")
        self.clock = clock
        self.metrics = metrics if metrics is not None else DeviceMetrics()
        # The settings `splitinf profile` timed the heads with, so the plan's costs are this runtime's.
        settings = SessionSettings().with_threads(self.config.intra_op_threads)
        # each file once: the options' heads and the local model share the plan's segments
        self._files = SessionPool(self.plan.path, settings)
        self._chains: dict[str, Chain] = {
            option.id: self._files.chain(option.id, [path for path, _ in option.device_files])
            for option in self.plan.options
        }
        self._warm_up()
        self._lock = threading.Lock()
        self.estimator = NetworkEstimator(
            prior_rtt_s=self.config.prior_rtt_s,
            prior_bandwidth_bps=self.config.prior_bandwidth_bps,
            window_s=self.config.policy.window_s,
        )
        self.policy = Policy(self.plan, self.config.policy, clock, self.config.spread_seed)
        # observed/profiled time per kind of part and the server's queue time (edge/correction.py)
        self.corrector = CostCorrector(correction or CorrectionConfig(window_s=self.config.policy.window_s))
        self._last_choice: str | None = None
        self.metrics.watch_correction(self.current_correction)
        self._recent_events: deque[Event] = deque(maxlen=256)
        self._client = client
        self._owns_client = False
        if self._client is None and self.config.server is not None:
            from splitinf.edge.client import InferenceClient

            self._client = InferenceClient(self.config.server, tls=self.config.tls, token=self.config.token)
            self._owns_client = True
        if self._client is None:
            log.warning("no server configured: every request is answered on the device")
        self.identity = TailIdentity(self.plan, self.config.tail_identity, self._client)
        self._last_light_probe = -float("inf")
        self.server_reached = False  # any call or probe answered by the server since start
        self._link = _LinkTracker()
        self._stop = threading.Event()
        self._metrics_server: Any = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.metrics.set_mode(self.policy.mode.value, self.policy.breaker.value)
        self._prober: threading.Thread | None = None
        if self._client is not None:
            self._measure_link_at_start()
        if background_probes and self._client is not None:
            self._prober = threading.Thread(target=self._probe_loop, name="splitinf-prober", daemon=True)
            self._prober.start()

    # -- lifecycle ---------------------------------------------------------------------------------

    def _warm_up(self) -> None:
        """One run per session on zeros at the plan's input shapes, so the first user request does not pay
        for allocations; a model that rejects zeros (silero-vad's sample rate) is warmed by its first request."""
        feeds = self.plan.zero_inputs()
        for option in self.plan.options:
            chain = self._chains[option.id]
            chain.check(feeds, self._wire_names(option) if option.is_remote else [t.name for t in self.plan.outputs])
            try:
                chain.run(feeds, quiet_run_options())
            except Exception as exc:  # onnxruntime's own error types: the model, not the plan, refuses zeros
                reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
                log.warning("option %s does not run on zeros (%s); its first request warms it up", option.id, reason)

    def start_metrics_server(self, port: int | None = None, host: str | None = None) -> int:
        """Serve /metrics on ``port`` (0: any free port); returns the bound port."""
        from prometheus_client import start_http_server

        port = self.config.metrics_port if port is None else port
        if port is None:
            raise PlanError("no metrics port configured")
        server, _thread = start_http_server(port, addr=host or self.config.metrics_host, registry=self.metrics.registry)
        self._metrics_server = server
        return int(server.server_port)

    def close(self) -> None:
        self._stop.set()
        if self._prober is not None:
            self._prober.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self._owns_client and self._client is not None:
            self._client.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def mode(self) -> Mode:
        return self.policy.mode

    @property
    def events(self) -> list[Event]:
        """Recent transitions (the last 256), oldest first."""
        with self._lock:
            return list(self._recent_events)

    # -- events and estimates ----------------------------------------------------------------------

    def _publish(self, events: Iterable[Event]) -> tuple[Event, ...]:
        """Log and count transitions; call with the lock held."""
        published = tuple(events)
        for event in published:
            self._recent_events.append(event)
            fields = event.as_log_fields()
            fields["correction"] = self.corrector.correction(self.clock()).to_json()
            fields["spread"] = self.policy.spread.to_json()
            level = logging.WARNING if event.new == Mode.FALLBACK.value else logging.INFO
            events_log.log(level, json.dumps(fields, sort_keys=True))
            if event.kind == "mode":
                self.metrics.mode_transitions.labels(from_mode=event.old, to_mode=event.new).inc()
            elif event.kind == "quarantine":
                self.metrics.quarantines.labels(option=event.old).inc()
        if published:
            self.metrics.set_mode(self.policy.mode.value, self.policy.breaker.value)
        return published

    def current_correction(self) -> Correction:
        """The cost correction decisions use now (the metrics read it at scrape time)."""
        with self._lock:
            return self.corrector.correction(self.clock())

    def _observe_part(self, part: str, observed_s: float, profiled_s: float, option_id: str | None = None) -> None:
        with self._lock:
            self.corrector.observe(part, observed_s, profiled_s, self.clock(), option_id)

    def _note_choice(
        self, option: Option, mode: Mode, correction: Correction, bandwidth_bps: float, rtt_s: float
    ) -> None:
        """One JSON line when the option answering requests changes (a cut, a codec, local); call with the lock held."""
        if option.id == self._last_choice:
            return
        fields = {
            "event": "option_change",
            "from": self._last_choice,
            "to": option.id,
            "mode": mode.value,
            "expected_s": round(expected_latency(option, bandwidth_bps, rtt_s, correction), 6),
            "correction": correction.to_json(),
            "spread": self.policy.spread.to_json(),
        }
        self._last_choice = option.id
        events_log.info(json.dumps(fields, sort_keys=True))

    def _observe_answer(self, option: Option, result: Any, *, retried: bool, shared: bool) -> float:
        """Feed a tail's answer into the estimates and the cost correction; call with the lock held.

        Returns the server's share of the round trip, which the network's leaves out: its queue
        time where it reports one, and its compute time as reported, or, from a server that does
        not report it (a stock V2 server), the profile's as corrected by what it reported before."""
        now = self.clock()
        compute_s = result.server_compute_s
        if compute_s > 0:
            self.corrector.observe("tail", compute_s, option.tail_seconds, now, option.id)
        else:
            compute_s = option.tail_seconds * self.corrector.correction(now).tail_factor(option.id)
        queue_s = result.server_queue_s
        if queue_s is not None:
            self.corrector.observe_queue(queue_s, now, option.id)
        server_s = compute_s + (queue_s or 0.0)
        self._observe(
            round_trip_s=result.round_trip_s,
            server_s=server_s,
            nbytes=result.request_bytes + result.response_bytes,
            retried=retried,
            shared=shared,
        )
        return server_s

    def _observe(self, *, round_trip_s: float, server_s: float, nbytes: int, retried: bool, shared: bool) -> None:
        """Feed a completed call into the estimates; call with the lock held."""
        now = self.clock()
        self.estimator.observe_call(
            round_trip_s=round_trip_s,
            server_compute_s=server_s,
            bytes_on_wire=nbytes,
            retried=retried,
            shared_link=shared,
            now=now,
        )
        snap = self.estimator.snapshot(now)
        self.metrics.bandwidth.set(snap.bandwidth_bps / 8)
        self.metrics.rtt.set(snap.rtt_s)
        self.metrics.rto.set(snap.rto_s)

    # -- inference ---------------------------------------------------------------------------------

    def _wire_names(self, option: Option) -> list[str]:
        # plans that list no wire tensors send whatever the head makes
        return [t.name for t in option.wire] or self._chains[option.id].output_names

    def _run_on_device(self, option: Option, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        start = time.perf_counter()
        values = self._chains[option.id].run(inputs)
        elapsed = time.perf_counter() - start
        self._observe_part(option.kind, elapsed, option.seconds)
        return {s.name: values[s.name] for s in self.plan.outputs}, elapsed

    def _call_remote(self, option: Option, wire: dict[str, np.ndarray], deadline: float, attempts: list[int]) -> Any:
        """The remote call with the single retry layer; ``attempts[0]`` counts the calls made."""
        client = self._client
        cfg = self.config

        def remaining() -> float:
            return deadline - time.monotonic()

        def attempt() -> Any:
            left = remaining()
            if left <= 0.001:
                raise _BudgetSpent()
            attempts[0] += 1
            if attempts[0] > 1:
                self.metrics.retries.inc()
            assert option.tail_model is not None
            self.identity.verify(option, timeout_s=left)  # its metadata, once per connection
            left = remaining()
            if left <= 0.001:
                raise _BudgetSpent()
            return client.infer(option.tail_model, wire, timeout_s=left, version=option.tail_version)

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, RemoteUnavailableError) and not exc.responded

        class budget_left(tenacity.stop.stop_base):
            def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
                return remaining() <= cfg.retry_backoff_s

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(retryable),
            stop=tenacity.stop_after_attempt(cfg.retry_attempts) | budget_left(),
            wait=tenacity.wait_random_exponential(multiplier=cfg.retry_backoff_s, max=cfg.retry_backoff_max_s),
            # never sleep past the deadline
            sleep=lambda seconds: time.sleep(max(0.0, min(seconds, remaining()))),
            reraise=True,
        )
        return retrying(attempt)

    def infer(self, inputs: Mapping[str, Any], budget_s: float | None = None) -> RuntimeResult:
        """Answer one request; never raises for network trouble (the fallback answers instead)."""
        checked = check_inputs(self.plan.inputs, inputs)
        for line in self._shape_watch.new_mismatches(checked):
            log.warning("%s", line)
        budget = self.config.budget_s if budget_s is None else budget_s
        if budget <= 0:
            raise InputError(f"budget_s must be > 0, got {budget}")
        start = time.perf_counter()
        deadline = time.monotonic() + budget
        with self._lock:
            now = self.clock()
            estimates = self.estimator.snapshot(now)
            correction = self.corrector.correction(now)
            decision = self.policy.decide(estimates, budget, correction)
            events = list(self._publish(decision.events))
            self._note_choice(decision.option, decision.mode, correction, estimates.bandwidth_bps, estimates.rtt_s)
        option = decision.option
        if not option.is_remote or self._client is None:
            if option.is_remote:  # no server configured at all
                option = self.policy.fallback
            outputs, on_device_s = self._run_on_device(option, checked)
            return self._finish(
                outputs, option, decision.mode, start, LatencyBreakdown(on_device_s=on_device_s), events=events
            )

        head_start = time.perf_counter()
        values = self._chains[option.id].run(checked)
        wire = {name: values[name] for name in self._wire_names(option)}
        head_s = time.perf_counter() - head_start
        self._observe_part("head", head_s, option.head_seconds, option.id)
        counter = [0]
        try:
            with self._link.use() as link:
                result = self._call_remote(option, wire, deadline, counter)
            self.identity.check_answer(option, result.outputs, result.model_sha256)
        except (TransportError, _BudgetSpent) as exc:
            reason = "budget_spent" if isinstance(exc, _BudgetSpent) else _reason(exc)
            # the tail is not there or not the plan's: set the option aside instead of blaming the link
            mismatch = isinstance(exc, RemoteMismatchError) or (
                isinstance(exc, RemoteRejectedError) and exc.code == "NOT_FOUND"
            )
            attempts = counter[0]
            if isinstance(exc, TransportError) and exc.responded:
                self.server_reached = True
            if isinstance(exc, RemoteUnavailableError):
                self.identity.invalidate()  # the server may come back as another deployment
            with self._lock:
                if isinstance(exc, RemoteTimeoutError):
                    self.estimator.on_timeout()
                # a budget spent on the device before sending says the request was slow, not that the link failed
                spent = isinstance(exc, _BudgetSpent)
                events += self._publish(
                    self.policy.record(
                        option.id,
                        ok=spent,
                        latency_s=time.perf_counter() - start,
                        reason=reason,
                        mismatch=mismatch,
                    )
                )
            events_log.info(json.dumps({"event": "fallback", "option": option.id, "reason": reason, "error": str(exc)}))
            self.metrics.fallbacks.labels(reason=reason).inc()
            fallback = self.policy.fallback
            outputs, on_device_s = self._run_on_device(fallback, checked)
            return self._finish(
                outputs,
                fallback,
                decision.mode,
                start,
                LatencyBreakdown(head_s=head_s, on_device_s=on_device_s),
                reason=reason,
                attempted=option.id,
                attempts=attempts,
                events=events,
            )
        attempts = counter[0]
        self.server_reached = True
        self.metrics.sent_bytes.inc(result.request_bytes)
        self.metrics.received_bytes.inc(result.response_bytes)
        with self._lock:
            server_s = self._observe_answer(option, result, retried=attempts > 1, shared=link.shared)
            events += self._publish(self.policy.record(option.id, ok=True, latency_s=time.perf_counter() - start))
        network_s = max(result.round_trip_s - server_s, 0.0)
        breakdown = LatencyBreakdown(head_s=head_s, network_s=network_s, server_s=server_s)
        outputs = {s.name: result.outputs[s.name] for s in self.plan.outputs}
        return self._finish(
            outputs,
            option,
            decision.mode,
            start,
            breakdown,
            attempts=attempts,
            nbytes=result.request_bytes,
            events=events,
        )

    def _finish(
        self,
        outputs: dict[str, np.ndarray],
        option: Option,
        mode: Mode,
        start: float,
        breakdown: LatencyBreakdown,
        *,
        reason: str | None = None,
        attempted: str | None = None,
        attempts: int = 0,
        nbytes: int = 0,
        events: Sequence[Event] = (),
    ) -> RuntimeResult:
        total = time.perf_counter() - start
        staged = breakdown.head_s + breakdown.network_s + breakdown.server_s + breakdown.on_device_s
        latency = LatencyBreakdown(
            head_s=breakdown.head_s,
            network_s=breakdown.network_s,
            server_s=breakdown.server_s,
            on_device_s=breakdown.on_device_s,
            wait_s=max(total - staged, 0.0),
            total_s=total,
        )
        self.metrics.request_seconds.labels(path=option.id, kind=option.kind).observe(total)
        return RuntimeResult(
            outputs=outputs,
            option_id=option.id,
            kind=option.kind,
            mode=mode.value,
            latency=latency,
            fallback_reason=reason,
            attempted_option=attempted,
            attempts=attempts,
            bytes_sent=nbytes,
            events=tuple(events),
        )

    def infer_stream(
        self, inputs: Iterable[Mapping[str, Any]], budget_s: float | None = None, workers: int | None = None
    ) -> Iterator[RuntimeResult]:
        """Answers in input order, with up to ``workers`` requests in flight, so the head of input
        i+1 runs while input i is on the network or on the server."""
        width = workers or self.config.stream_workers
        if self._pool is None or self._pool._max_workers < width:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=width, thread_name_prefix="splitinf-stream")
        pool = self._pool
        window: deque[concurrent.futures.Future[RuntimeResult]] = deque()
        for item in inputs:
            window.append(pool.submit(self.infer, item, budget_s))
            if len(window) >= width:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    # -- probes ------------------------------------------------------------------------------------

    def _probe_loop(self) -> None:
        interval = min(self.config.policy.probe_interval_s, 0.25)
        while not self._stop.wait(interval):
            try:
                self.probe_once()
            except Exception:  # a probe must never kill the prober
                log.exception("probe failed unexpectedly")

    def probe_once(self) -> str | None:
        """Send at most one probe if one is due; returns its kind ("half_open", "ready") or None."""
        if self._client is None:
            return None
        now = self.clock()
        with self._lock:
            self._publish(self.policy.tick(self.estimator.snapshot(now), self.corrector.correction(now)))
            half_open = self.policy.probe_due()
            option = self.policy.probe_option() if half_open else None
            if half_open:
                self.policy.probe_started()
            base_age = self.estimator.base_age_s(now)
            light = (
                not half_open
                and now - self._last_light_probe >= self.config.light_probe_interval_s
                and (self.policy.mode is not Mode.SPLIT or base_age is None or base_age > self.config.policy.window_s)
            )
            if light:
                self._last_light_probe = now
        if half_open:
            self._half_open_probe(option)
            return "half_open"
        if light:
            self._light_probe()
            return "ready"
        return None

    def _measure_link_at_start(self) -> None:
        """Connect, then take one RTT sample, so the first request is decided on a measured link, not the prior.

        The first ServerReady pays for TCP and HTTP/2 set-up, so only the second one is a sample. A server
        that is down costs at most two probe timeouts here; the policy then starts from the prior.
        """
        try:
            ready = self._client.server_ready(timeout_s=self.config.probe_timeout_s)
            self.server_reached = True
            if not ready:
                return
        except TransportError as exc:
            log.warning("tail server not reachable at start (%s); starting from the prior estimates", exc)
            return
        self._last_light_probe = self.clock()
        self._light_probe()
        for option in self.plan.split_options:  # the tails' identity, while no request waits for it
            try:
                self.identity.verify(option, timeout_s=self.config.probe_timeout_s)
            except TransportError as exc:
                log.warning("option %s: %s", option.id, exc)

    def _light_probe(self) -> bool:
        start = time.perf_counter()
        try:
            with self._link.use() as link:
                ready = bool(self._client.server_ready(timeout_s=self.config.probe_timeout_s))
        except TransportError:
            self.metrics.probes.labels(kind="ready", result="failed").inc()
            return False
        elapsed = time.perf_counter() - start
        self.server_reached = True
        if ready:
            with self._lock:
                self._observe(round_trip_s=elapsed, server_s=0.0, nbytes=0, retried=False, shared=link.shared)
        self.metrics.probes.labels(kind="ready", result="ok" if ready else "not_ready").inc()
        return ready

    def _half_open_probe(self, option: Option | None) -> None:
        """A small real request to a tail: proves the link, the server and the tail's identity."""
        ok = False
        reason = "probe_failed"
        latency: float | None = None
        mismatch_option: str | None = None
        try:
            if option is None:
                ok = self._light_probe()
            else:
                wire = {t.name: t.zeros() for t in option.wire}
                assert option.tail_model is not None
                self.identity.verify(option, timeout_s=self.config.probe_timeout_s)
                start = time.perf_counter()
                with self._link.use() as link:
                    result = self._client.infer(
                        option.tail_model, wire, timeout_s=self.config.probe_timeout_s, version=option.tail_version
                    )
                latency = time.perf_counter() - start
                self.server_reached = True
                self.identity.check_answer(option, result.outputs, result.model_sha256)
                ok = True
                with self._lock:
                    self._observe_answer(option, result, retried=False, shared=link.shared)
        except TransportError as exc:
            reason = f"probe_{_reason(exc)}"
            if isinstance(exc, RemoteMismatchError) and option is not None:
                mismatch_option = option.id
        self.metrics.probes.labels(kind="half_open", result="ok" if ok else reason).inc()
        with self._lock:
            if mismatch_option is not None:
                self._publish(self.policy.record(mismatch_option, ok=False, mismatch=True, reason="mismatch"))
            self._publish(self.policy.record_probe(ok=ok, latency_s=latency, reason=reason))
