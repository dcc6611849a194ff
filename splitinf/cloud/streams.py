"""Open ``ModelStreamInfer`` streams: how many one client and all clients may hold, and which idle ones end.

A stream holds a gRPC server thread for as long as it is open, busy or not. Without a bound,
72 idle streams from one client took every thread and health, liveness and every other client
were refused (issue 14). ``StreamRegistry`` admits a stream only while its client holds fewer
than ``per_client`` and all clients fewer than ``total``; a stream with no request in progress
for ``idle_timeout_s`` is cancelled by a reaper thread, freeing its thread. The gRPC server's
pool is sized so that ``total`` streams plus ``max_inflight`` unary calls leave threads for
health and liveness (``splitinf.cloud.app``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from splitinf.errors import ServerBusyError

__all__ = ["OpenStream", "StreamRegistry", "client_of"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def client_of(peer: str) -> str:
    """The client a gRPC peer string names, without its port: ``ipv4:10.0.0.5:41234`` -> ``ipv4:10.0.0.5``."""
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return f"{kind}:{address.rsplit(':', 1)[0]}"
    return peer


@dataclass
class OpenStream:
    """One admitted stream: its client, when it last did something, and how to end it."""

    client: str
    cancel: Callable[[], None]
    last_active: float
    busy: bool = False
    key: int = field(default=0)

    def track(self, requests: Iterable[T], clock: Callable[[], float] = time.monotonic) -> Iterator[T]:
        """``requests``, marking the stream busy from each request's arrival until the next one is asked for."""
        for request in requests:
            self.busy, self.last_active = True, clock()
            yield request
            self.busy, self.last_active = False, clock()


class StreamRegistry:
    """Admission and idle timeout for streams; ``open`` raises ``ServerBusyError`` (RESOURCE_EXHAUSTED)."""

    def __init__(
        self,
        *,
        total: int,
        per_client: int,
        idle_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total = total
        self.per_client = per_client
        self.idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[int, OpenStream] = {}
        self._keys = itertools.count(1)
        self._stopped = threading.Event()
        self._reaper: threading.Thread | None = None

    def open(self, peer: str, cancel: Callable[[], None]) -> OpenStream:
        client = client_of(peer)
        with self._lock:
            held = sum(1 for stream in self._open.values() if stream.client == client)
            if held >= self.per_client:
                raise ServerBusyError(
                    f"this client already holds {held} open streams, the limit per client; "
                    "send more requests on the streams it has, or close one"
                )
            if len(self._open) >= self.total:
                raise ServerBusyError(f"the server holds its limit of {self.total} open streams; retry later")
            stream = OpenStream(client, cancel, self._clock(), key=next(self._keys))
            self._open[stream.key] = stream
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap_loop, name="splitinf-stream-reaper", daemon=True)
                self._reaper.start()
        return stream

    def close(self, stream: OpenStream) -> None:
        with self._lock:
            self._open.pop(stream.key, None)

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def reap(self) -> int:
        """Cancel every stream idle for ``idle_timeout_s``; returns how many."""
        now = self._clock()
        with self._lock:
            idle = [s for s in self._open.values() if not s.busy and now - s.last_active >= self.idle_timeout_s]
            for stream in idle:
                del self._open[stream.key]
        for stream in idle:
            log.info("closing a stream of %s idle for %.0fs", stream.client, now - stream.last_active)
            stream.cancel()
        return len(idle)

    def _reap_loop(self) -> None:
        interval = min(1.0, self.idle_timeout_s / 4)
        while not self._stopped.wait(interval):
            self.reap()

    def stop(self) -> None:
        self._stopped.set()
