"""A TCP fault proxy: a real man in the middle between a client and a server.

One asyncio event loop on one background thread forwards every accepted
connection to the target. Each direction of a connection has a reader and a
writer: the reader stamps each chunk with its due time (arrival + latency +
jitter, never earlier than the chunk before it, so byte order is kept) and
puts it in a bounded queue (full queue = TCP back-pressure on the sender);
the writer waits for the due time, takes tokens from the direction's token
bucket (shared by all connections, like a link) and writes.

Faults, per direction (``upstream`` = client to server, ``downstream`` = server to client):

- ``latency_ms`` / ``jitter_ms``: each chunk is delayed by latency plus a
  uniform value in ``[-jitter, +jitter]`` (clamped at 0).
- ``rate_kbit``: a token-bucket bandwidth cap (1 kbit = 1000 bits).
- ``blackhole``: bytes (and FIN) are read and silently dropped; the connection
  stays open and nothing is refused.
- ``pause``: bytes are held, not dropped (what a cable pulled for a while looks
  like to TCP); delivered when the pause ends.
- ``close_after_bytes``: after exactly N more bytes in that direction the
  connection is closed (FIN both ways): a tensor cut in mid-flight. Counted per
  connection from the moment the setting took effect (or the connection opened).

And connection-wide: ``reset``: every existing connection is reset (RST, via
``SO_LINGER`` 0) and new ones are accepted and reset at once while it is on.
A target that refuses the proxy's connection is mirrored as a reset too.

Settings replace each other as a whole, take effect at once on existing
connections (bytes already queued keep their due time: they are in flight),
and are thread-safe. ``schedule`` toggles settings through timed phases.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, TypeVar

from splitinf.errors import ConfigError

__all__ = [
    "DIRECTIONS",
    "DirectionFaults",
    "FaultProxy",
    "FaultSettings",
    "ProxyStats",
    "control_request",
    "parse_host_port",
    "parse_schedule",
]

Direction = Literal["upstream", "downstream"]
DIRECTIONS: tuple[Direction, Direction] = ("upstream", "downstream")
_READ_CHUNK = 64 * 1024
_SENDER = {"upstream": "client", "downstream": "server"}
_T = TypeVar("_T")


@dataclass(frozen=True)
class DirectionFaults:
    """Faults applied to the bytes flowing one way."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_kbit: float | None = None
    blackhole: bool = False
    pause: bool = False
    close_after_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("latency_ms", "jitter_ms"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"fault {name} must be a number >= 0, got {value!r}")
        if self.rate_kbit is not None and (
            not isinstance(self.rate_kbit, (int, float)) or isinstance(self.rate_kbit, bool) or self.rate_kbit <= 0
        ):
            raise ConfigError(f"fault rate_kbit must be a number > 0 (or null for no cap), got {self.rate_kbit!r}")
        for name in ("blackhole", "pause"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"fault {name} must be true or false, got {getattr(self, name)!r}")
        n = self.close_after_bytes
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise ConfigError(f"fault close_after_bytes must be an integer >= 0 (or null), got {n!r}")

    @property
    def rate_bytes_per_s(self) -> float | None:
        return None if self.rate_kbit is None else self.rate_kbit * 1000.0 / 8.0


_DIRECTION_FIELDS = frozenset(f.name for f in fields(DirectionFaults))


@dataclass(frozen=True)
class FaultSettings:
    """The whole state of the emulated link: faults per direction plus connection resets."""

    upstream: DirectionFaults = field(default_factory=DirectionFaults)
    downstream: DirectionFaults = field(default_factory=DirectionFaults)
    reset: bool = False

    @classmethod
    def make(
        cls, *, direction: Literal["both", "upstream", "downstream"] = "both", reset: bool = False, **faults: Any
    ) -> FaultSettings:
        """Settings with ``faults`` (DirectionFaults fields) on ``direction`` and none on the other way."""
        unknown = set(faults) - _DIRECTION_FIELDS
        if unknown:
            raise ConfigError(
                f"unknown fault setting(s) {sorted(unknown)}; known: {sorted(_DIRECTION_FIELDS)}, direction, reset"
            )
        if direction not in ("both", "upstream", "downstream"):
            raise ConfigError(f"fault direction must be 'both', 'upstream' or 'downstream', got {direction!r}")
        if not isinstance(reset, bool):
            raise ConfigError(f"fault reset must be true or false, got {reset!r}")
        faulty = DirectionFaults(**faults)
        clean = DirectionFaults()
        return cls(
            upstream=faulty if direction in ("both", "upstream") else clean,
            downstream=faulty if direction in ("both", "downstream") else clean,
            reset=reset,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultSettings:
        """Parse the flat form (``{"latency_ms": 50, "direction": "upstream"}``) or the
        full form ``to_dict`` writes (``{"upstream": {...}, "downstream": {...}, "reset": false}``)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"fault settings must be a JSON object, got {type(data).__name__}")
        if "upstream" in data or "downstream" in data:
            unknown = set(data) - {"upstream", "downstream", "reset"}
            if unknown:
                raise ConfigError(f"unknown key(s) {sorted(unknown)} in fault settings; use upstream/downstream/reset")
            per_direction = {}
            for name in DIRECTIONS:
                part = data.get(name, {})
                if not isinstance(part, Mapping) or set(part) - _DIRECTION_FIELDS:
                    raise ConfigError(
                        f"fault settings {name!r} must be an object with keys from {sorted(_DIRECTION_FIELDS)}"
                    )
                per_direction[name] = DirectionFaults(**part)
            reset = data.get("reset", False)
            if not isinstance(reset, bool):
                raise ConfigError(f"fault reset must be true or false, got {reset!r}")
            return cls(upstream=per_direction["upstream"], downstream=per_direction["downstream"], reset=reset)
        return cls.make(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return {"upstream": asdict(self.upstream), "downstream": asdict(self.downstream), "reset": self.reset}

    def direction(self, name: Direction) -> DirectionFaults:
        return self.upstream if name == "upstream" else self.downstream


@dataclass(frozen=True)
class ProxyStats:
    """Counters since the proxy started (bytes per direction: ``{"upstream": n, "downstream": n}``)."""

    connections_accepted: int
    connections_open: int
    connections_reset: int
    connections_cut: int
    target_refused: int
    bytes_forwarded: dict[str, int]
    bytes_dropped: dict[str, int]
    closed_by: dict[str, int]  # connections the client / the server closed or reset (FIN or RST seen)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_host_port(text: str, *, what: str = "address") -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:PORT"`` for IPv6) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{what} {text!r} is not HOST:PORT (for example 127.0.0.1:8001)")
    return host, int(port_text)


class _TokenBucket:
    """A link's bandwidth: tokens are bytes. The burst is what a shaper must allow and no more: one
    Ethernet frame, or 4 ms of traffic where that is more (tc's tbf needs rate/HZ at HZ=250). A larger
    floor lets small messages through free: 4 KiB, as before, is 33 ms of a 1 Mbit/s link, which a
    physical link at that rate never gives and no cost model charging bytes/bandwidth could predict."""

    def __init__(self) -> None:
        self.tokens = 0.0
        self.stamp = time.monotonic()
        self.rate: float | None = None

    def burst(self, rate: float) -> float:
        return max(1514.0, rate * 0.004)

    def refill(self, rate: float) -> None:
        now = time.monotonic()
        if self.rate != rate:  # a new cap starts with a full bucket
            self.rate, self.tokens = rate, self.burst(rate)
        else:
            self.tokens = min(self.burst(rate), self.tokens + (now - self.stamp) * rate)
        self.stamp = now


_CLOSE = object()  # queue marker: close the connection (FIN both ways) once everything before it is written
_EOF = object()  # queue marker: the sender half-closed; pass the FIN on


class _Connection:
    def __init__(self, proxy: FaultProxy, client: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.server_writer: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client_writer, self.server_writer) if w is not None]

    def reset(self) -> None:
        """Abort both sides with RST."""
        if self.closed:
            return
        self.closed = True
        for writer in self.writers():
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self._cancel_tasks()

    def close(self) -> None:
        """Close both sides with FIN after what is already written."""
        if self.closed:
            return
        self.closed = True
        for writer in self.writers():
            writer.close()
        self._cancel_tasks()

    def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


class FaultProxy:
    """A TCP proxy that injects faults; use as a context manager.

    ::

        with FaultProxy("127.0.0.1:8001") as proxy:          # listens on 127.0.0.1, port 0
            client = InferenceClient(proxy.address)
            proxy.set(latency_ms=80, jitter_ms=10)            # both directions
            proxy.set(blackhole=True, direction="upstream")   # replaces the settings above
            proxy.schedule([(2.0, FaultSettings.make(blackhole=True)), (1.0, FaultSettings())], repeat=3)
            proxy.clear()

    ``control_port`` (``0`` for any) also serves the line-based JSON control
    protocol (see ``splitinf.cli.proxy``) so another process can steer it.
    """

    def __init__(
        self,
        target: str | tuple[str, int],
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        control_port: int | None = None,
        settings: FaultSettings | None = None,
        max_buffer_bytes: int = 1 << 20,
        connect_timeout_s: float = 5.0,
        seed: int = 0,
    ) -> None:
        host, port = parse_host_port(target, what="target") if isinstance(target, str) else target
        self.target_host, self.target_port = host, int(port)
        self.listen_host = listen_host
        self._listen_port = listen_port
        self._control_port_wanted = control_port
        self._settings = settings or FaultSettings()
        self._generation = 0
        self.max_buffer_bytes = max_buffer_bytes
        self.connect_timeout_s = connect_timeout_s
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        self._connections: set[_Connection] = set()
        self._buckets = {name: _TokenBucket() for name in DIRECTIONS}
        self._changed: asyncio.Event | None = None
        self._schedule_task: asyncio.Task[None] | None = None
        self._schedule_done = threading.Event()
        self._schedule_done.set()
        self._counts = {"accepted": 0, "reset": 0, "cut": 0, "refused": 0}
        self._forwarded: dict[str, int] = dict.fromkeys(DIRECTIONS, 0)
        self._dropped: dict[str, int] = dict.fromkeys(DIRECTIONS, 0)
        self._closed_by: dict[str, int] = {"client": 0, "server": 0}
        self.port = 0
        self.control_port: int | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` clients connect to."""
        return f"{self.listen_host}:{self.port}"

    def start(self) -> FaultProxy:
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready: asyncio.Future[None] = loop.create_future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.create_task(self._serve(ready))
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"FaultProxy->{self.target_host}:{self.target_port}")
        self._thread.daemon = True
        self._thread.start()
        try:
            self._call(lambda: asyncio.shield(ready))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the listeners and every connection (RST), stop the loop, join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return

        async def shutdown() -> None:
            if self._schedule_task is not None:
                self._schedule_task.cancel()
            for server in self._servers:
                server.close()
            for conn in list(self._connections):
                conn.reset()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for server in self._servers:
                await server.wait_closed()

        with contextlib.suppress(RuntimeError):
            self._call(shutdown)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._schedule_done.set()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call(self, make: Callable[[], Awaitable[_T]], timeout: float = 10.0) -> _T:
        """Run a coroutine on the proxy's loop from any other thread and wait for its result."""
        if self._loop is None or self._loop.is_closed():
            raise RuntimeError("FaultProxy is not running; use it as a context manager or call start()")

        async def wrapper() -> _T:
            return await make()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    # ---- control ---------------------------------------------------------------------------------

    @property
    def settings(self) -> FaultSettings:
        return self._settings

    def set(self, settings: FaultSettings | None = None, **faults: Any) -> FaultSettings:
        """Replace the settings (cancelling a running schedule): either a ``FaultSettings`` or the
        keyword form of ``FaultSettings.make`` (``latency_ms=50, direction="upstream"``)."""
        if settings is not None and faults:
            raise ConfigError("pass either a FaultSettings or keyword faults, not both")
        new = settings if settings is not None else FaultSettings.make(**faults)

        async def apply() -> FaultSettings:
            self._cancel_schedule()
            self._apply(new)
            return new

        return self._call(apply)

    def clear(self) -> FaultSettings:
        """No faults: a healthy link."""
        return self.set(FaultSettings())

    def reset_connections(self) -> int:
        """Reset (RST) every open connection once; returns how many."""

        async def reset_all() -> int:
            conns = [c for c in self._connections if not c.closed]
            for conn in conns:
                self._reset(conn)
            return len(conns)

        return self._call(reset_all)

    def schedule(
        self,
        phases: Sequence[tuple[float, FaultSettings]],
        *,
        repeat: int | None = 1,
        then: FaultSettings | None = None,
    ) -> None:
        """Toggle settings through ``(duration_s, settings)`` phases, ``repeat`` times (None: until
        ``set``/``clear``/``stop``), then apply ``then`` (default: no faults). Returns at once."""
        if not phases:
            raise ConfigError("a fault schedule needs at least one (duration_s, settings) phase")
        for duration, settings in phases:
            if not isinstance(duration, (int, float)) or duration <= 0 or not isinstance(settings, FaultSettings):
                raise ConfigError(f"schedule phases are (duration_s > 0, FaultSettings), got {(duration, settings)!r}")
        if repeat is not None and repeat < 1:
            raise ConfigError(f"schedule repeat must be >= 1 or None (forever), got {repeat}")
        final = then or FaultSettings()

        async def begin() -> None:
            self._start_schedule(phases, repeat, final)

        self._call(begin)

    def wait_schedule(self, timeout: float | None = None) -> bool:
        """Block until the running schedule has finished; False on timeout."""
        return self._schedule_done.wait(timeout)

    def stats(self) -> ProxyStats:
        async def snapshot() -> ProxyStats:
            return self._snapshot()

        return self._call(snapshot)

    # ---- inside the loop -------------------------------------------------------------------------

    def _cancel_schedule(self) -> None:
        if self._schedule_task is not None and not self._schedule_task.done():
            self._schedule_task.cancel()
        self._schedule_task = None
        self._schedule_done.set()

    def _start_schedule(
        self, phases: Sequence[tuple[float, FaultSettings]], repeat: int | None, final: FaultSettings
    ) -> None:
        async def run_phases() -> None:
            try:
                rounds = 0
                while repeat is None or rounds < repeat:
                    for index, (duration, settings) in enumerate(phases):
                        if rounds or index:  # the first phase is applied before this task starts
                            self._apply(settings)
                        await asyncio.sleep(duration)
                    rounds += 1
                self._apply(final)
            finally:
                self._schedule_done.set()

        self._cancel_schedule()
        self._schedule_done.clear()
        self._apply(phases[0][1])
        self._schedule_task = asyncio.get_running_loop().create_task(run_phases())

    def _apply(self, settings: FaultSettings) -> None:
        self._settings = settings
        self._generation += 1
        if self._changed is not None:  # wake every waiter so it re-reads the settings
            self._changed.set()
            self._changed = asyncio.Event()
        if settings.reset:
            for conn in list(self._connections):
                self._reset(conn)

    def _reset(self, conn: _Connection) -> None:
        if not conn.closed:
            self._counts["reset"] += 1
            conn.reset()

    async def _wait_for_change(self, timeout: float | None) -> None:
        assert self._changed is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def _serve(self, ready: asyncio.Future[None]) -> None:
        try:
            self._changed = asyncio.Event()
            server = await asyncio.start_server(self._on_client, self.listen_host, self._listen_port)
            self._servers.append(server)
            self.port = server.sockets[0].getsockname()[1]
            if self._control_port_wanted is not None:
                control = await asyncio.start_server(self._on_control, self.listen_host, self._control_port_wanted)
                self._servers.append(control)
                self.control_port = control.sockets[0].getsockname()[1]
            ready.set_result(None)
        except BaseException as exc:
            ready.set_exception(exc)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._counts["accepted"] += 1
        conn = _Connection(self, (reader, writer))
        self._connections.add(conn)
        handler = asyncio.current_task()
        assert handler is not None
        conn.tasks.append(handler)
        try:
            if self._settings.reset:
                self._reset(conn)
                return
            try:
                server_reader, server_writer = await asyncio.wait_for(
                    asyncio.open_connection(self.target_host, self.target_port), self.connect_timeout_s
                )
            except (OSError, asyncio.TimeoutError):
                self._counts["refused"] += 1
                self._reset(conn)  # the client sees what it would see without the proxy: a refusal
                return
            conn.server_writer = server_writer
            if conn.closed:  # reset while connecting
                conn.reset()
                return
            pumps = [
                self._pump(conn, "upstream", reader, server_writer),
                self._pump(conn, "downstream", server_reader, writer),
            ]
            await asyncio.gather(*pumps)
            conn.close()
        except asyncio.CancelledError:
            pass
        finally:
            if not conn.closed:
                conn.reset()
            self._connections.discard(conn)

    async def _pump(
        self, conn: _Connection, name: Direction, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        queue: asyncio.Queue[tuple[float, object]] = asyncio.Queue()
        room = asyncio.Event()
        room.set()
        queued = [0]
        write_task = asyncio.get_running_loop().create_task(self._write(conn, name, queue, writer, queued, room))
        conn.tasks.append(write_task)
        try:
            await self._read(conn, name, reader, queue, queued, room)
            await write_task
        except (ConnectionError, OSError):
            self._reset(conn)  # a peer's reset travels on, as it would through a router
        finally:
            write_task.cancel()

    async def _read(
        self,
        conn: _Connection,
        name: Direction,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, object]],
        queued: list[int],
        room: asyncio.Event,
    ) -> None:
        loop = asyncio.get_running_loop()
        generation, counted, last_due = self._generation, 0, 0.0
        while True:
            while queued[0] >= self.max_buffer_bytes:
                room.clear()
                await room.wait()
            try:
                data = await reader.read(_READ_CHUNK)
            except ConnectionError:
                self._closed_by[_SENDER[name]] += 1
                raise
            faults = self._settings.direction(name)
            if generation != self._generation:
                generation, counted = self._generation, 0
            if not data:
                self._closed_by[_SENDER[name]] += 1
                if not faults.blackhole:
                    queue.put_nowait((last_due, _EOF))
                return
            if faults.blackhole:
                self._dropped[name] += len(data)
                continue
            cut = False
            if faults.close_after_bytes is not None:
                left = faults.close_after_bytes - counted
                if len(data) >= left:
                    data, cut = data[:left], True
                counted += len(data)
            delay = faults.latency_ms
            if faults.jitter_ms:
                delay += self._rng.uniform(-faults.jitter_ms, faults.jitter_ms)
            last_due = max(last_due, loop.time() + max(0.0, delay) / 1000.0)
            if data:
                queued[0] += len(data)
                queue.put_nowait((last_due, data))
            if cut:
                queue.put_nowait((last_due, _CLOSE))
                return

    async def _write(
        self,
        conn: _Connection,
        name: Direction,
        queue: asyncio.Queue[tuple[float, object]],
        writer: asyncio.StreamWriter,
        queued: list[int],
        room: asyncio.Event,
    ) -> None:
        loop = asyncio.get_running_loop()
        bucket = self._buckets[name]
        while True:
            due, item = await queue.get()
            while (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if item is _EOF:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            if item is _CLOSE:
                writer.transport.set_write_buffer_limits(0)  # drain() then waits for every byte
                await writer.drain()
                self._counts["cut"] += 1
                conn.close()
                return
            assert isinstance(item, bytes)
            view = memoryview(item)
            while view:
                faults = self._settings.direction(name)
                if faults.pause:
                    await self._wait_for_change(None)
                    continue
                rate = faults.rate_bytes_per_s
                if rate is None:
                    piece = view
                else:
                    bucket.refill(rate)
                    piece = view[: int(bucket.burst(rate))]
                    if bucket.tokens < len(piece):
                        await self._wait_for_change((len(piece) - bucket.tokens) / rate)
                        continue
                    bucket.tokens -= len(piece)
                writer.write(piece)
                self._forwarded[name] += len(piece)
                view = view[len(piece) :]
                await writer.drain()
            queued[0] -= len(item)
            room.set()

    # ---- the control protocol --------------------------------------------------------------------

    async def _on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                if not line.strip():
                    continue
                reply = await self._control(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _control(self, line: bytes) -> dict[str, Any]:
        try:
            try:
                message = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"control line is not JSON ({exc}); send one JSON object per line") from exc
            if not isinstance(message, dict):
                raise ConfigError('control message must be a JSON object like {"op": "get"}')
            op = message.pop("op", None)
            if op == "set":
                settings = FaultSettings.from_dict(message)
                self._cancel_schedule()
                self._apply(settings)
                return {"ok": True, "settings": settings.to_dict()}
            if op == "clear":
                self._cancel_schedule()
                self._apply(FaultSettings())
                return {"ok": True, "settings": self._settings.to_dict()}
            if op == "get":
                return {"ok": True, "settings": self._settings.to_dict()}
            if op == "stats":
                return {"ok": True, "stats": self._snapshot().to_dict()}
            if op == "reset_connections":
                conns = [c for c in self._connections if not c.closed]
                for conn in conns:
                    self._reset(conn)
                return {"ok": True, "reset": len(conns)}
            if op == "schedule":
                phases, repeat = parse_schedule(message)
                self._start_schedule(phases, repeat, FaultSettings())
                return {"ok": True, "phases": len(phases), "repeat": repeat}
            raise ConfigError(f"unknown control op {op!r}; use set, clear, get, stats, reset_connections, schedule")
        except ConfigError as exc:
            return {"ok": False, "error": str(exc)}
        except TypeError as exc:
            return {"ok": False, "error": f"bad control message: {exc}"}

    def _snapshot(self) -> ProxyStats:
        return ProxyStats(
            connections_accepted=self._counts["accepted"],
            connections_open=sum(1 for c in self._connections if not c.closed),
            connections_reset=self._counts["reset"],
            connections_cut=self._counts["cut"],
            target_refused=self._counts["refused"],
            bytes_forwarded=dict(self._forwarded),
            bytes_dropped=dict(self._dropped),
            closed_by=dict(self._closed_by),
        )


def parse_schedule(data: Mapping[str, Any]) -> tuple[list[tuple[float, FaultSettings]], int | None]:
    """``{"phases": [{"duration_s": 2, "blackhole": true}, {"duration_s": 1}], "repeat": 3}``
    (``repeat``: null for forever; default 1) -> (phases, repeat)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("phases"), list) or not data["phases"]:
        raise ConfigError('a schedule is {"phases": [{"duration_s": 2, "blackhole": true}, ...], "repeat": 1}')
    unknown = set(data) - {"phases", "repeat"}
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in schedule; use phases, repeat")
    phases = []
    for phase in data["phases"]:
        if not isinstance(phase, Mapping) or "duration_s" not in phase:
            raise ConfigError(f"each schedule phase needs duration_s, got {phase!r}")
        rest = dict(phase)
        duration = rest.pop("duration_s")
        if not isinstance(duration, (int, float)) or isinstance(duration, bool) or duration <= 0:
            raise ConfigError(f"schedule phase duration_s must be a number > 0, got {duration!r}")
        phases.append((float(duration), FaultSettings.from_dict(rest)))
    repeat = data.get("repeat", 1)
    if repeat is not None and (not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1):
        raise ConfigError(f"schedule repeat must be an integer >= 1 or null (forever), got {repeat!r}")
    return phases, repeat


def control_request(address: str | tuple[str, int], message: Mapping[str, Any], *, timeout_s: float = 5.0) -> Any:
    """Send one control message to a running proxy's control port; return the parsed reply."""
    host, port = parse_host_port(address, what="control address") if isinstance(address, str) else address
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(json.dumps(dict(message)).encode() + b"\n")
        with sock.makefile("rb") as stream:
            line = stream.readline()
    if not line:
        raise ConnectionError(f"fault proxy control at {host}:{port} closed without replying")
    return json.loads(line)
