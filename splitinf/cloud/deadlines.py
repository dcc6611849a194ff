"""Work nobody waits for is not done: a call's deadline and liveness (``Expiry``), and each model's typical
run time (``RunTimes``), so a request is dropped rather than run when its answer would come too late.

Checked where a request waits (for admission, an execution slot, a batch) and just before onnxruntime
starts on it; a dropped request raises ``RequestDroppedError`` (DEADLINE_EXCEEDED) and is counted in
``splitinf_requests_dropped_total{model, reason}``.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from splitinf.errors import RequestDroppedError

__all__ = ["NO_EXPIRY", "Expiry", "RunTimes"]

# A remaining time beyond this is no deadline (grpc reports "no deadline" as a far future).
_FOREVER_S = 1e7


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Expiry:
    """When a call's answer stops being useful: ``at`` (``time.monotonic()``; None: never) and
    ``active`` (False once the client cancelled or went away)."""

    at: float | None = None
    active: Callable[[], bool] = _always

    @classmethod
    def after(cls, remaining_s: float | None, active: Callable[[], bool] = _always) -> Expiry:
        """An expiry ``remaining_s`` from now (None or a far future: no deadline)."""
        if remaining_s is None or remaining_s > _FOREVER_S:
            return cls(None, active)
        return cls(time.monotonic() + remaining_s, active)

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def check(self, model: str, needed_s: float = 0.0) -> None:
        """Raise ``RequestDroppedError`` when the caller left, the deadline passed, or less than
        ``needed_s`` (the model's typical run time) is left."""
        if not self.active():
            raise RequestDroppedError(f"model {model!r}: the client cancelled the call", "cancelled")
        left = self.remaining()
        if left is None:
            return
        if left <= 0:
            raise RequestDroppedError(f"model {model!r}: the call's deadline passed before it could run", "deadline")
        if left < needed_s:
            raise RequestDroppedError(
                f"model {model!r}: {left * 1000:.0f} ms left, a run typically takes {needed_s * 1000:.0f} ms; "
                "not started (raise the deadline)",
                "too_late",
            )


NO_EXPIRY = Expiry()


class RunTimes:
    """A model's recent onnxruntime run times; ``typical_s()`` is their median (0 until one is known)."""

    def __init__(self, window: int = 31):
        self._recent: deque[float] = deque(maxlen=window)
        self._typical = 0.0
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        with self._lock:
            self._recent.append(seconds)
            self._typical = statistics.median(self._recent)

    def typical_s(self) -> float:
        return self._typical
