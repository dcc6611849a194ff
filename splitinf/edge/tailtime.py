"""The tail's compute time on the server, for answers that do not report it.

The network estimates need the network's share of a round trip: ``round_trip - server compute``.
``splitinf serve`` reports its compute time in each answer (``splitinf_compute_ns``); stock V2
servers (Triton, KServe, MLServer) do not, and counting their compute as transfer time makes the
link look slower than it is (against MLServer on loopback the bandwidth estimate read 100-160
Mbit/s instead of Gbit/s). So where an answer carries no compute time, the device uses what it
knows of the tail: the compute time the server profile gave the plan (``Option.tail_seconds``),
scaled by how the reported times of that tail compared with the profile while the server did
report them (a server busier or slower than the profiled one).

A round trip shorter than the expected compute (a faster server than profiled) is never turned
into a negative network time: the network share is then the round trip's floor, and the
estimator rejects a transfer time below its minimum.
"""

from __future__ import annotations

import threading

from splitinf.contract.plan import Option

__all__ = ["TailTime"]


class TailTime:
    """Per-option compute time of the tails, reported or expected. Thread-safe."""

    def __init__(self, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._lock = threading.Lock()
        self._ratio: dict[str, float] = {}  # option id -> reported / profiled, smoothed

    def server_seconds(self, option: Option, reported_s: float) -> float:
        """The compute time to take out of this answer's round trip; ``reported_s`` <= 0 means not reported."""
        if reported_s > 0:
            if option.tail_seconds > 0:
                sample = reported_s / option.tail_seconds
                with self._lock:
                    old = self._ratio.get(option.id)
                    self._ratio[option.id] = sample if old is None else old + self.alpha * (sample - old)
            return reported_s
        return self.expected_seconds(option)

    def expected_seconds(self, option: Option) -> float:
        """The profiled compute time, corrected by what the server reported of this tail, if it ever did."""
        with self._lock:
            ratio = self._ratio.get(option.id, 1.0)
        return option.tail_seconds * ratio
