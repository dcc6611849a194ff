"""FaultProxy with real sockets: the test holds both ends of every proxied connection."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from splitinf.errors import ConfigError
from splitinf.tools.faults import FaultProxy, FaultSettings, control_request, parse_schedule

pytestmark = pytest.mark.timeout(60)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


@pytest.fixture
def proxy(listener: socket.socket) -> Iterator[FaultProxy]:
    with FaultProxy(listener.getsockname(), control_port=0) as running:
        yield running


@pytest.fixture
def pair(proxy: FaultProxy, listener: socket.socket) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client end, server end) of one connection through the proxy."""
    client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    server, _ = listener.accept()
    server.settimeout(5)
    yield client, server
    client.close()
    server.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_all_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def assert_accepted_then_reset(port: int) -> None:
    """The connection is accepted, then reset: the RST may already be there when connect() returns."""
    with pytest.raises(ConnectionResetError):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.recv(1)


def round_trip_s(client: socket.socket, server: socket.socket, payload: bytes = b"ping") -> float:
    start = time.monotonic()
    client.sendall(payload)
    assert recv_exactly(server, len(payload)) == payload
    server.sendall(payload)
    assert recv_exactly(client, len(payload)) == payload
    return time.monotonic() - start


def test_healthy_proxy_forwards_both_ways_and_counts_bytes(
    proxy: FaultProxy, pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = pair
    client.sendall(b"x" * 100_000)
    assert recv_exactly(server, 100_000) == b"x" * 100_000
    server.sendall(b"y" * 5_000)
    assert recv_exactly(client, 5_000) == b"y" * 5_000
    stats = proxy.stats()
    assert stats.bytes_forwarded == {"upstream": 100_000, "downstream": 5_000}
    assert stats.bytes_dropped == {"upstream": 0, "downstream": 0}
    assert stats.connections_accepted == 1 and stats.connections_open == 1


def test_latency_applies_to_an_open_connection_each_way(
    proxy: FaultProxy, pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = pair
    baseline = min(round_trip_s(client, server) for _ in range(3))
    proxy.set(latency_ms=100)
    delayed = min(round_trip_s(client, server) for _ in range(3))
    added = delayed - baseline
    assert 0.19 <= added <= 0.2 + 1.0, f"added round-trip {added:.3f}s, expected about 0.2s"


def test_latency_on_one_direction_leaves_the_other_alone(
    proxy: FaultProxy, pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = pair
    proxy.set(latency_ms=150, direction="upstream")
    start = time.monotonic()
    client.sendall(b"up")
    assert recv_exactly(server, 2) == b"up"
    upstream_s = time.monotonic() - start
    start = time.monotonic()
    server.sendall(b"down")
    assert recv_exactly(client, 4) == b"down"
    downstream_s = time.monotonic() - start
    assert upstream_s >= 0.145
    assert downstream_s < upstream_s / 3


def test_jitter_varies_the_delay_and_keeps_byte_order(
    proxy: FaultProxy, pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = pair
    proxy.set(latency_ms=30, jitter_ms=20, direction="upstream")
    delays = []
    for i in range(25):
        message = f"{i:04d}".encode()
        start = time.monotonic()
        client.sendall(message)
        assert recv_exactly(server, 4) == message
        delays.append(time.monotonic() - start)
    assert min(delays) >= 0.009
    assert max(delays) - min(delays) >= 0.010, "jitter should spread the delays"
    assert statistics.median(delays) < 0.030 + 0.5
    # a burst of many chunks with random delays still arrives in order
    burst = b"".join(f"{i:06d}".encode() for i in range(2000))
    for start_index in range(0, len(burst), 600):
        client.sendall(burst[start_index : start_index + 600])
    assert recv_exactly(server, len(burst)) == burst


def test_rate_cap_limits_one_direction_and_not_the_other(
    proxy: FaultProxy, pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = pair
    cap_kbit = 4000.0  # 500 kB/s
    size = 400_000
    proxy.set(rate_kbit=cap_kbit, direction="downstream")

    def timed_transfer(sender: socket.socket, receiver: socket.socket) -> float:
        thread = threading.Thread(target=sender.sendall, args=(b"z" * size,))
        thread.start()
        first = recv_exactly(receiver, 1)
        start = time.monotonic()
        rest = recv_exactly(receiver, size - 1)
        elapsed = time.monotonic() - start
        thread.join(5)
        assert len(first) + len(rest) == size
        return elapsed

    down_rate = (size - 1) * 8 / 1000 / timed_transfer(server, client)
    up_rate = (size - 1) * 8 / 1000 / timed_transfer(client, server)
    assert 0.5 * cap_kbit <= down_rate <= 1.15 * cap_kbit, f"measured {down_rate:.0f} kbit/s under a {cap_kbit} cap"
    assert up_rate > 3 * cap_kbit, f"the uncapped direction ran at only {up_rate:.0f} kbit/s"


def test_settings_changed_from_many_threads_mid_transfer_keep_every_byte_in_order(
    proxy: FaultProxy, pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = pair
    payload = b"".join(i.to_bytes(4, "big") for i in range(100_000))  # 400 kB of a counting sequence
    variants = [  # every one slows the link, so the transfer spans hundreds of changes
        FaultSettings.make(latency_ms=5, jitter_ms=5, rate_kbit=4_000),
        FaultSettings.make(rate_kbit=2_000, direction="upstream"),
        FaultSettings.make(pause=True),
        FaultSettings.make(latency_ms=1, rate_kbit=8_000),
    ]
    proxy.set(variants[0])
    done = threading.Event()
    changes = [0, 0, 0]

    def toggle(seed: int) -> None:
        i = seed
        while not done.is_set():
            proxy.set(variants[i % len(variants)])
            changes[seed] += 1
            i += 1
            done.wait(0.005)

    togglers = [threading.Thread(target=toggle, args=(k,)) for k in range(3)]
    sender = threading.Thread(target=client.sendall, args=(payload,))
    for thread in [*togglers, sender]:
        thread.start()
    try:
        received = recv_exactly(server, len(payload))
    finally:
        done.set()
        for thread in [*togglers, sender]:
            thread.join(5)
    assert received == payload
    assert sum(changes) >= 30, "the settings should have changed many times during the transfer"


def test_blackhole_drops_bytes_and_keeps_the_connection_open(
    proxy: FaultProxy, pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = pair
    proxy.set(blackhole=True)
    client.sendall(b"lost" * 1000)
    server.settimeout(0.3)
    with pytest.raises(TimeoutError):
        server.recv(1)
    server.sendall(b"also lost")
    client.settimeout(0.3)
    with pytest.raises(TimeoutError):
        client.recv(1)
    wait_until(lambda: proxy.stats().bytes_dropped == {"upstream": 4000, "downstream": 9}, what="drops counted")
    client.shutdown(socket.SHUT_WR)  # even a FIN vanishes in the hole, but the proxy saw the client close
    wait_until(lambda: proxy.stats().closed_by == {"client": 1, "server": 0}, what="the client's FIN")
    with pytest.raises(TimeoutError):
        server.recv(1)
    proxy.clear()
    server.settimeout(5)
    server.sendall(b"after the hole")  # same connection, and only new bytes arrive
    client.settimeout(5)
    assert recv_exactly(client, 14) == b"after the hole"
    assert proxy.stats().connections_accepted == 1


def test_blackhole_upstream_only_lets_downstream_through(
    proxy: FaultProxy, pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = pair
    proxy.set(blackhole=True, direction="upstream")
    client.sendall(b"dropped")
    server.sendall(b"delivered")
    assert recv_exactly(client, 9) == b"delivered"
    server.settimeout(0.3)
    with pytest.raises(TimeoutError):
        server.recv(1)


def test_pause_holds_bytes_and_delivers_them_in_order_afterwards(
    proxy: FaultProxy, pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = pair
    proxy.set(pause=True)
    client.sendall(b"held-1;")
    client.sendall(b"held-2;")
    server.settimeout(0.3)
    with pytest.raises(TimeoutError):
        server.recv(1)
    proxy.clear()
    server.settimeout(5)
    assert recv_exactly(server, 14) == b"held-1;held-2;"


def test_reset_gives_connection_reset_to_both_ends_and_to_new_connections(
    proxy: FaultProxy, pair: tuple[socket.socket, socket.socket], listener: socket.socket
) -> None:
    client, server = pair
    assert round_trip_s(client, server) > 0
    proxy.set(reset=True)
    with pytest.raises(ConnectionResetError):
        client.recv(1)
    with pytest.raises(ConnectionResetError):
        server.recv(1)
    assert_accepted_then_reset(proxy.port)
    proxy.clear()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as healed:
        healed_server, _ = listener.accept()
        with healed_server:
            healed_server.settimeout(5)
            assert round_trip_s(healed, healed_server) > 0
    assert proxy.stats().connections_reset == 2


def test_reset_connections_once(proxy: FaultProxy, pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = pair
    assert proxy.reset_connections() == 1
    with pytest.raises(ConnectionResetError):
        client.recv(1)
    assert proxy.settings == FaultSettings()


def test_close_after_bytes_downstream_delivers_exactly_n_then_eof(
    proxy: FaultProxy, pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = pair
    server.sendall(b"before")  # bytes before the setting do not count
    assert recv_exactly(client, 6) == b"before"
    proxy.set(close_after_bytes=1000, direction="downstream")
    threading.Thread(target=lambda: server.sendall(bytes(range(256)) * 20), daemon=True).start()
    received = recv_all_until_eof(client)
    assert received == (bytes(range(256)) * 20)[:1000]
    assert proxy.stats().connections_cut == 1


def test_close_after_bytes_upstream_cuts_a_message_mid_flight(
    proxy: FaultProxy, pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = pair
    proxy.set(close_after_bytes=3000, direction="upstream")
    message = b"t" * 50_000
    client.sendall(message)
    assert recv_all_until_eof(server) == message[:3000]
    try:  # the client's end is closed too (RST when the proxy left its bytes unread)
        assert client.recv(1) == b""
    except ConnectionResetError:
        pass


def test_unreachable_target_looks_like_a_refusal() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        dead_port = placeholder.getsockname()[1]
    with FaultProxy(("127.0.0.1", dead_port)) as proxy:
        assert_accepted_then_reset(proxy.port)
        assert proxy.stats().target_refused == 1


def test_schedule_toggles_phases_then_heals(proxy: FaultProxy, pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    seen: list[FaultSettings] = []
    hole = FaultSettings.make(blackhole=True)
    slow = FaultSettings.make(latency_ms=5)
    proxy.schedule([(0.15, hole), (0.15, slow)], repeat=2)

    def record() -> bool:
        if not seen or seen[-1] != proxy.settings:
            seen.append(proxy.settings)
        return proxy.wait_schedule(0)

    wait_until(record, timeout=5, what="the schedule to finish")
    assert seen[:4] == [hole, slow, hole, slow]
    assert proxy.settings == FaultSettings()
    assert round_trip_s(client, server) > 0


def test_set_cancels_a_running_schedule(proxy: FaultProxy) -> None:
    proxy.schedule([(30.0, FaultSettings.make(blackhole=True))], repeat=None)
    assert not proxy.wait_schedule(0)
    proxy.set(latency_ms=1)
    assert proxy.wait_schedule(1)
    assert proxy.settings == FaultSettings.make(latency_ms=1)


def test_control_socket_steers_the_proxy(proxy: FaultProxy, pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    control = ("127.0.0.1", proxy.control_port or 0)
    reply = control_request(control, {"op": "set", "blackhole": True, "direction": "downstream"})
    assert reply["ok"] and reply["settings"]["downstream"]["blackhole"] is True
    assert reply["settings"]["upstream"]["blackhole"] is False
    assert proxy.settings.downstream.blackhole
    server.sendall(b"gone")
    wait_until(lambda: control_request(control, {"op": "stats"})["stats"]["bytes_dropped"]["downstream"] == 4)
    assert control_request(control, {"op": "clear"})["ok"]
    assert control_request(control, {"op": "get"})["settings"] == FaultSettings().to_dict()
    reply = control_request(control, {"op": "schedule", "phases": [{"duration_s": 5, "pause": True}], "repeat": 1})
    assert reply["ok"] and proxy.settings.upstream.pause
    assert control_request(control, {"op": "reset_connections"}) == {"ok": True, "reset": 1}
    assert not control_request(control, {"op": "set", "latency_ms": -1})["ok"]
    assert proxy.wait_schedule(0) is False  # neither a reset nor a rejected set cancels the schedule
    assert control_request(control, {"op": "clear"})["ok"]
    assert proxy.wait_schedule(0) is True


def test_control_socket_rejects_bad_messages_with_a_reason(proxy: FaultProxy) -> None:
    control = ("127.0.0.1", proxy.control_port or 0)
    assert "not JSON" in control_request_raw(control, b"latency 5\n")["error"]
    assert "unknown control op" in control_request(control, {"op": "explode"})["error"]
    assert "latency_ms" in control_request(control, {"op": "set", "latency_ms": "fast"})["error"]
    assert "unknown fault setting" in control_request(control, {"op": "set", "lag": 5})["error"]
    assert proxy.settings == FaultSettings()


def control_request_raw(address: tuple[str, int], line: bytes) -> dict[str, str]:
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(line)
        reply: dict[str, str] = json.loads(sock.makefile("rb").readline())
        return reply


def test_settings_validation_names_the_problem() -> None:
    with pytest.raises(ConfigError, match="latency_ms"):
        FaultSettings.make(latency_ms=-5)
    with pytest.raises(ConfigError, match="rate_kbit"):
        FaultSettings.make(rate_kbit=0)
    with pytest.raises(ConfigError, match="direction"):
        FaultSettings.make(direction="sideways", latency_ms=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="duration_s"):
        parse_schedule({"phases": [{"blackhole": True}]})
    settings = FaultSettings.make(rate_kbit=800, close_after_bytes=10, direction="upstream", reset=True)
    assert FaultSettings.from_dict(settings.to_dict()) == settings
    assert FaultSettings.from_dict({"rate_kbit": 800, "close_after_bytes": 10, "direction": "upstream", "reset": True})
    assert settings.downstream.rate_kbit is None


def test_stopping_the_proxy_leaves_no_thread_behind(listener: socket.socket) -> None:
    before = set(threading.enumerate())
    with FaultProxy(listener.getsockname()) as proxy:
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        server, _ = listener.accept()
        proxy.set(latency_ms=10_000)  # bytes waiting in the queue must not keep the proxy alive
        client.sendall(b"never arrives")
    wait_until(lambda: set(threading.enumerate()) <= before, what="the proxy thread to exit")
    with pytest.raises(ConnectionResetError):
        client.recv(1)
    client.close()
    server.close()


# ---- the command line ---------------------------------------------------------------------------


def test_cli_proxy_forwards_and_is_steered_through_its_control_port(listener: socket.socket) -> None:
    target = f"127.0.0.1:{listener.getsockname()[1]}"
    command = [sys.executable, "-m", "splitinf", "proxy", "--target", target, "--control", "127.0.0.1:0"]
    process = subprocess.Popen([*command, "--latency-ms", "50"], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        listening = process.stdout.readline().split()
        control = process.stdout.readline().split()
        assert listening[0] == "listening" and control[0] == "control"
        host, port = listening[1].rsplit(":", 1)
        reply = control_request(control[1], {"op": "get"})
        assert reply["settings"]["upstream"]["latency_ms"] == 50
        with socket.create_connection((host, int(port)), timeout=5) as client:
            server, _ = listener.accept()
            with server:
                server.settimeout(5)
                assert round_trip_s(client, server) >= 0.095
                assert control_request(control[1], {"op": "set", "reset": True})["ok"]
                with pytest.raises(ConnectionResetError):
                    client.recv(1)
    finally:
        process.terminate()
        assert process.wait(10) == 0


def test_cli_proxy_runs_a_schedule_file(listener: socket.socket, tmp_path: Path) -> None:
    schedule = tmp_path / "flap.json"
    schedule.write_text(json.dumps({"phases": [{"duration_s": 30, "blackhole": True, "direction": "upstream"}]}))
    target = f"127.0.0.1:{listener.getsockname()[1]}"
    argv = [sys.executable, "-m", "splitinf", "proxy", "--target", target, "--control", "127.0.0.1:0"]
    process = subprocess.Popen([*argv, "--schedule", str(schedule)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        process.stdout.readline()
        control = process.stdout.readline().split()[1]
        settings = control_request(control, {"op": "get"})["settings"]
        assert settings["upstream"]["blackhole"] is True and settings["downstream"]["blackhole"] is False
    finally:
        process.terminate()
        assert process.wait(10) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "is not JSON"), ('{"phases": [{"blackhole": true}]}', "duration_s"), (None, "cannot read")],
)
def test_cli_proxy_rejects_a_bad_schedule_file(tmp_path: Path, content: str | None, message: str) -> None:
    schedule = tmp_path / "schedule.json"
    if content is not None:
        schedule.write_text(content)
    argv = [sys.executable, "-m", "splitinf", "proxy", "--target", "127.0.0.1:9", "--schedule", str(schedule)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_cli_proxy_rejects_a_bad_target_without_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "splitinf", "proxy", "--target", "nowhere"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "HOST:PORT" in result.stderr and "Traceback" not in result.stderr


# ---- gRPC through the proxy ---------------------------------------------------------------------


class EchoService:
    """A real grpc server with one generic unary method that echoes bytes and counts its calls."""

    method = "/splitinf.test.Echo/Echo"

    def __init__(self) -> None:
        self.calls = 0
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.max_receive_message_length", 8 << 20)]
        )
        handler = grpc.method_handlers_generic_handler(
            "splitinf.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(self.echo)}
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        return request


@pytest.fixture
def echo_service() -> Iterator[EchoService]:
    service = EchoService()
    yield service
    service.server.stop(None).wait(5)


def call_until_ok(call: Callable[[], bytes], timeout: float = 10.0) -> bytes:
    """A call may still meet the connection whose reset the channel has not yet noticed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise


def open_echo(address: str) -> tuple[grpc.Channel, Callable[..., bytes]]:
    channel = grpc.insecure_channel(
        address, options=[("grpc.max_send_message_length", 8 << 20), ("grpc.initial_reconnect_backoff_ms", 100)]
    )
    return channel, channel.unary_unary(EchoService.method)


def test_grpc_call_into_a_blackhole_ends_at_its_deadline_and_heals(echo_service: EchoService) -> None:
    with FaultProxy(("127.0.0.1", echo_service.port)) as proxy:
        channel, echo = open_echo(proxy.address)
        with channel:
            assert echo(b"hello", timeout=5) == b"hello"
            proxy.set(blackhole=True)
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as hole:
                echo(b"into the hole", timeout=0.5)
            assert hole.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - start < 0.5 + 2.0  # bounded by the deadline, not by TCP
            assert echo_service.calls == 1
            # the bytes it dropped broke that HTTP/2 connection for good: a reset makes the channel reconnect
            proxy.clear()
            proxy.reset_connections()
            assert call_until_ok(lambda: echo(b"back", timeout=2, wait_for_ready=True)) == b"back"
            assert echo_service.calls == 2


def test_grpc_message_cut_mid_flight_never_reaches_the_handler(echo_service: EchoService) -> None:
    with FaultProxy(("127.0.0.1", echo_service.port)) as proxy:
        proxy.set(close_after_bytes=200_000, direction="upstream")
        channel, echo = open_echo(proxy.address)
        with channel:
            with pytest.raises(grpc.RpcError) as cut:
                echo(b"w" * 1_000_000, timeout=5)
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
            assert proxy.stats().connections_cut == 1
            assert echo_service.calls == 0, "the server must never run a cut message"
            proxy.clear()
            assert echo(b"w" * 1_000_000, timeout=5, wait_for_ready=True) == b"w" * 1_000_000
            assert echo_service.calls == 1
