"""The device's Prometheus metrics, in its own ``CollectorRegistry`` (never the global one).

Names follow Prometheus conventions: ``splitinf_device_`` prefix, base units, ``_total`` for counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from splitinf.contract.plan import Correction
from splitinf.edge.correction import PARTS
from splitinf.edge.policy import Mode

__all__ = ["DEVICE_LATENCY_BUCKETS_S", "DeviceMetrics"]

DEVICE_LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


def _cpu_temperature_celsius(thermal_root: str = "/sys/class/thermal") -> float | None:
    """The first thermal zone's temperature (a Pi exposes its SoC there); None when the board has none."""
    import glob

    for zone in sorted(glob.glob(f"{thermal_root}/thermal_zone*/temp")):
        try:
            with open(zone) as f:
                return int(f.read().strip()) / 1000.0
        except (OSError, ValueError):
            continue
    return None


class _CorrectionCollector(Collector):
    """``splitinf_device_cost_correction_ratio`` and ``splitinf_device_server_queue_seconds``."""

    def __init__(self, current: Callable[[], Correction]) -> None:
        self._current = current

    def collect(self) -> Iterator[Metric]:
        correction = self._current()
        ratio = GaugeMetricFamily(
            "splitinf_device_cost_correction_ratio",
            "Observed over profiled time, as decisions use it: by kind of part (head, tail, local, fallback;"
            " option empty) and for the heads and tails of the split options run lately (by option id)",
            labels=["part", "option"],
        )
        for part in PARTS:
            ratio.add_metric([part, ""], getattr(correction, part))
        for part, factors in (("head", correction.heads), ("tail", correction.tails)):
            for option_id, factor in sorted(factors.items()):
                ratio.add_metric([part, option_id], factor)
        yield ratio
        queue = GaugeMetricFamily(
            "splitinf_device_server_queue_seconds",
            "The server's queue time per split option run lately, as decisions use it (its splitinf_queue_ns,"
            " smoothed; none for an option not run lately or a server that does not report it)",
            labels=["option"],
        )
        for option_id, seconds in sorted(correction.queues.items()):
            queue.add_metric([option_id], seconds)
        yield queue


class DeviceMetrics:
    """The device runtime's metrics, in a registry of its own (``registry``)."""

    BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}

    def __init__(self, registry: CollectorRegistry | None = None, thermal_root: str = "/sys/class/thermal"):
        from prometheus_client import ProcessCollector

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds
        self.request_seconds = Histogram(
            "splitinf_device_request_seconds",
            "End-to-end latency of device requests, by path (option id) and kind (split/local/fallback)",
            ["path", "kind"],
            buckets=DEVICE_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.fallbacks = Counter(
            "splitinf_device_fallbacks", "Requests answered by the fallback model, by reason", ["reason"], registry=r
        )
        self.mode_transitions = Counter(
            "splitinf_device_mode_transitions", "Policy mode changes", ["from_mode", "to_mode"], registry=r
        )
        self.mode = Gauge("splitinf_device_mode", "1 for the policy's current mode", ["mode"], registry=r)
        self.breaker_state = Gauge(
            "splitinf_device_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", registry=r
        )
        self.bandwidth = Gauge(
            "splitinf_device_bandwidth_estimate_bytes_per_second", "Estimated uplink bandwidth", registry=r
        )
        self.rtt = Gauge("splitinf_device_rtt_estimate_seconds", "Smoothed round-trip time (RFC 6298 SRTT)", registry=r)
        self.rto = Gauge("splitinf_device_rto_seconds", "Retransmission timeout (RFC 6298 RTO)", registry=r)
        self.sent_bytes = Counter("splitinf_device_sent_bytes", "Request bytes sent to the server", registry=r)
        self.received_bytes = Counter(
            "splitinf_device_received_bytes", "Response bytes received from the server", registry=r
        )
        self.probes = Counter(
            "splitinf_device_probes", "Probes sent, by kind and result", ["kind", "result"], registry=r
        )
        self.retries = Counter("splitinf_device_retries", "Remote call attempts beyond the first", registry=r)
        self.quarantines = Counter(
            "splitinf_device_quarantines", "Split options set aside after a mismatched answer", ["option"], registry=r
        )
        if _cpu_temperature_celsius(thermal_root) is not None:
            temperature = Gauge(
                "splitinf_device_cpu_temperature_celsius", "SoC temperature (thermal throttling slows a Pi)", registry=r
            )
            temperature.set_function(lambda: _cpu_temperature_celsius(thermal_root) or float("nan"))

    def watch_correction(self, current: Callable[[], Correction]) -> None:
        """Show the cost correction as decisions use it, read at scrape time (nothing per request)."""
        self.registry.register(_CorrectionCollector(current))

    def set_mode(self, mode: str, breaker: str) -> None:
        for name in Mode:
            self.mode.labels(mode=name.value).set(1 if name.value == mode else 0)
        self.breaker_state.set(self.BREAKER_VALUES.get(breaker, 0))
