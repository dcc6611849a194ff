"""NetnsLink on the real kernel: veth between two namespaces, tc tbf, severing the link."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from splitinf.tools.faults.netns import NetnsLink, NetnsUnavailableError, netem_available, netns_unavailable_reason

REASON = netns_unavailable_reason()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(REASON is not None, reason=f"network namespaces unavailable: {REASON}"),
    pytest.mark.timeout(60),
]


@pytest.fixture
def link() -> Iterator[NetnsLink]:
    with NetnsLink() as created:
        yield created


def connected_pair(link: NetnsLink) -> tuple[socket.socket, socket.socket]:
    """(device end, server end) of a TCP connection across the veth link."""
    with link.socket_in("server") as listener:
        listener.bind((link.server_ip, 0))
        listener.listen()
        device = link.socket_in("device")
        device.settimeout(5)
        device.connect((link.server_ip, listener.getsockname()[1]))
        listener.settimeout(5)
        server, _ = listener.accept()
        server.settimeout(5)
    return device, server


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(65536, n - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def transfer_kbit_s(sender: socket.socket, receiver: socket.socket, size: int) -> float:
    thread = threading.Thread(target=sender.sendall, args=(b"r" * size,))
    thread.start()
    assert recv_exactly(receiver, 1) == b"r"
    start = time.monotonic()
    assert len(recv_exactly(receiver, size - 1)) == size - 1
    elapsed = time.monotonic() - start
    thread.join(10)
    return (size - 1) * 8 / 1000 / elapsed


def test_the_link_connects_the_two_namespaces_and_nothing_else(link: NetnsLink) -> None:
    device, server = connected_pair(link)
    with device, server:
        device.sendall(b"hello over veth")
        assert recv_exactly(server, 15) == b"hello over veth"
        assert server.getpeername()[0] == link.device_ip
    # nothing was added to the caller's namespace
    caller_addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert link.server_ip not in caller_addresses and link.device_ip not in caller_addresses
    assert link.device_if not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert link.operstate("device") == "UP" and link.operstate("server") == "UP"


def test_tbf_caps_the_shaped_direction_only(link: NetnsLink) -> None:
    cap_kbit = 8000.0
    link.shape(rate_kbit=cap_kbit, side="server")  # server egress: the downstream direction
    assert "tbf" in link.qdiscs("server") and "tbf" not in link.qdiscs("device")
    device, server = connected_pair(link)
    with device, server:
        down = transfer_kbit_s(server, device, 800_000)
        up = transfer_kbit_s(device, server, 800_000)
    assert 0.5 * cap_kbit <= down <= 1.2 * cap_kbit, f"{down:.0f} kbit/s through an {cap_kbit:.0f} kbit/s tbf"
    assert up > 3 * cap_kbit
    link.unshape()
    assert "tbf" not in link.qdiscs("server")


def test_severed_server_end_swallows_packets_and_tcp_delivers_them_after_healing(link: NetnsLink) -> None:
    device, server = connected_pair(link)
    with device, server:
        link.sever()
        assert link.operstate("server") == "DOWN"
        device.sendall(b"during the outage")  # accepted by the device's kernel, then lost on the wire
        server.settimeout(0.5)
        with pytest.raises(TimeoutError):
            server.recv(1)
        link.heal()
        server.settimeout(10)  # retransmission after the link is back
        assert recv_exactly(server, 17) == b"during the outage"


def test_severed_device_end_fails_new_connections_at_once(link: NetnsLink) -> None:
    link.sever("device")
    with link.socket_in("device") as device:
        device.settimeout(5)
        start = time.monotonic()
        with pytest.raises(OSError) as refused:
            device.connect((link.server_ip, 9))
        assert refused.value.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)
        assert time.monotonic() - start < 1.0


def test_processes_run_inside_a_namespace_and_are_stopped_on_close() -> None:
    with NetnsLink() as link:
        server_code = (
            "import socket, sys\n"
            f"s = socket.create_server(('{link.server_ip}', 0))\n"
            "print(s.getsockname()[1], flush=True)\n"
            "c, _ = s.accept()\n"
            "c.sendall(c.recv(100).upper())\n"
            "sys.stdin.read()\n"
        )
        process = link.popen(
            "server", [sys.executable, "-c", server_code], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        port = int(process.stdout.readline())
        with link.socket_in("device") as device:
            device.settimeout(5)
            device.connect((link.server_ip, port))
            device.sendall(b"shout")
            assert recv_exactly(device, 5) == b"SHOUT"
        routes = link.run("device", ["ip", "route"]).stdout
        assert "10.231.0.0/30" in routes
        names = (link.device_ns, link.server_ns)
    assert process.poll() is not None, "close() must stop processes started inside"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(name in listed for name in names)


def test_call_in_runs_a_function_inside_the_namespace(link: NetnsLink) -> None:
    with link.call_in("server", lambda: socket.create_server((link.server_ip, 0))) as listener:
        port = listener.getsockname()[1]
        with link.socket_in("device") as device:
            device.settimeout(5)
            device.connect((link.server_ip, port))
    with pytest.raises(OSError):  # this namespace does not have the address: the call ran elsewhere
        socket.create_server((link.server_ip, 0)).close()
    with pytest.raises(ZeroDivisionError):  # errors come back to the caller
        link.call_in("device", lambda: 1 // 0)


def test_two_links_at_once_do_not_collide() -> None:
    with NetnsLink() as first, NetnsLink() as second:
        assert {first.device_ns, first.server_ns}.isdisjoint({second.device_ns, second.server_ns})
        for link in (first, second):
            device, server = connected_pair(link)
            with device, server:
                device.sendall(b"ok")
                assert recv_exactly(server, 2) == b"ok"


def test_netem_delay_when_the_kernel_has_it(link: NetnsLink) -> None:
    if not netem_available():
        with pytest.raises(NetnsUnavailableError, match="sch_netem"):
            link.shape(delay_ms=50)
        pytest.skip("this kernel has no sch_netem qdisc: netem delay cannot be tested here (FaultProxy covers latency)")
    link.shape(delay_ms=50, side="both")
    device, server = connected_pair(link)
    with device, server:
        start = time.monotonic()
        device.sendall(b"x")
        assert recv_exactly(server, 1) == b"x"
        server.sendall(b"y")
        assert recv_exactly(device, 1) == b"y"
        assert time.monotonic() - start >= 0.095
