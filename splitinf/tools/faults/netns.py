"""Real kernel links for chaos tests: two network namespaces joined by a veth pair.

::

    device namespace                         server namespace
    veth-dev 10.231.0.1/30  <---- veth ---->  veth-srv 10.231.0.2/30

Nothing is created in the caller's namespace: the veth pair is born inside the
device namespace with its peer moved straight into the server namespace, so the
fixed interface names and addresses cannot collide with anything, and two runs
differ only in their namespace names (unique per process and instance).

- ``shape(rate_kbit=...)``: ``tc`` token-bucket filter (tbf) on egress;
  ``shape(delay_ms=...)`` adds netem delay when the kernel has ``sch_netem``
  (``netem_available()`` says whether it does).
- ``sever()`` / ``heal()``: ``ip link set ... down/up``. Taking the server's end
  down leaves the device's end without carrier: its packets vanish (a black hole
  for the device); ``sever(side="device")`` removes the device's route instead,
  so its sends fail at once (``ENETUNREACH``).
- ``popen``/``run``: a subprocess inside a namespace (``ip netns exec``); use it
  for anything that creates sockets on threads it does not own (gRPC's core).
- ``call_in``/``socket_in``: run a function (make a socket) inside a namespace from
  this process: ``setns`` on a short-lived thread of its own; a socket keeps its
  namespace for life, so it can be used from any thread afterwards.

Needs root and the ``ip``/``tc`` tools; ``netns_unavailable_reason()`` says why not.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, Literal, TypeVar

from splitinf.errors import ConfigError

__all__ = [
    "NetnsLink",
    "call_in_namespace",
    "NetnsUnavailableError",
    "netem_available",
    "netns_unavailable_reason",
]

Side = Literal["device", "server"]
_CLONE_NEWNET = 0x40000000
_counter = itertools.count()
_T = TypeVar("_T")


class NetnsUnavailableError(RuntimeError):
    """This machine cannot create the namespaces or qdiscs asked for (not root, no ip/tc, no sch_netem)."""


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsUnavailableError(f"`{' '.join(argv)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


@cache
def netns_unavailable_reason() -> str | None:
    """None when network namespaces, veth and tc tbf work here; otherwise why not."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the `{tool}` tool (iproute2) is not installed"
    name = f"si-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        _run(["ip", "netns", "add", name])
    except (NetnsUnavailableError, OSError) as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _run(["ip", "-n", name, "link", "add", "probe-a", "type", "veth", "peer", "name", "probe-b"])
        _run(["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "probe-a", "root", "tbf", "rate", "1mbit",
              "burst", "16kb", "latency", "100ms"])  # fmt: skip
    except (NetnsUnavailableError, OSError) as exc:
        return f"veth or tc tbf does not work here: {exc}"
    finally:
        _run(["ip", "netns", "delete", name], check=False)
    return None


@cache
def netem_available() -> bool:
    """Whether the kernel has the netem qdisc (delay/jitter/loss); many minimal kernels lack it."""
    if netns_unavailable_reason() is not None:
        return False
    name = f"si-netem-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        _run(["ip", "netns", "add", name])
        _run(["ip", "-n", name, "link", "add", "probe-a", "type", "veth", "peer", "name", "probe-b"])
        result = _run(
            ["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "probe-a", "root", "netem", "delay", "1ms"],
            check=False,
        )
        return result.returncode == 0
    except (NetnsUnavailableError, OSError):
        return False
    finally:
        _run(["ip", "netns", "delete", name], check=False)


class NetnsLink:
    """Two namespaces and the veth link between them; a context manager that always cleans up."""

    device_if = "veth-dev"
    server_if = "veth-srv"

    def __init__(self, *, device_ip: str = "10.231.0.1", server_ip: str = "10.231.0.2", prefix_len: int = 30) -> None:
        tag = f"{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:4]}"
        self.device_ns = f"si-dev-{tag}"
        self.server_ns = f"si-srv-{tag}"
        self.device_ip, self.server_ip, self.prefix_len = device_ip, server_ip, prefix_len
        self._processes: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []

    def namespace(self, side: Side) -> str:
        if side not in ("device", "server"):
            raise ConfigError(f"namespace side must be 'device' or 'server', got {side!r}")
        return self.device_ns if side == "device" else self.server_ns

    def interface(self, side: Side) -> str:
        return self.device_if if side == "device" else self.server_if

    # ---- lifecycle -------------------------------------------------------------------------------

    def create(self) -> NetnsLink:
        reason = netns_unavailable_reason()
        if reason is not None:
            raise NetnsUnavailableError(reason)
        try:
            for ns in (self.device_ns, self.server_ns):
                _run(["ip", "netns", "add", ns])
                self._created.append(ns)
            _run(["ip", "-n", self.device_ns, "link", "add", self.device_if, "type", "veth",
                  "peer", "name", self.server_if, "netns", self.server_ns])  # fmt: skip
            for side, ip in (("device", self.device_ip), ("server", self.server_ip)):
                ns, interface = self.namespace(side), self.interface(side)  # type: ignore[arg-type]
                _run(["ip", "-n", ns, "addr", "add", f"{ip}/{self.prefix_len}", "dev", interface])
                _run(["ip", "-n", ns, "link", "set", interface, "up"])
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the processes started inside, then delete both namespaces (and with them the veth pair)."""
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self._processes.clear()
        for ns in self._created:
            _run(["ip", "netns", "delete", ns], check=False)
        self._created.clear()

    def __enter__(self) -> NetnsLink:
        return self.create()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- the link --------------------------------------------------------------------------------

    def sever(self, side: Side = "server") -> None:
        """Take one end of the link down (see the module docstring for what each side means)."""
        _run(["ip", "-n", self.namespace(side), "link", "set", self.interface(side), "down"])

    def heal(self) -> None:
        """Both ends up again (and the device's route back)."""
        for side in ("device", "server"):
            _run(["ip", "-n", self.namespace(side), "link", "set", self.interface(side), "up"])

    def operstate(self, side: Side = "device") -> str:
        """The kernel's view of one end: ``UP``, ``DOWN``, ``LOWERLAYERDOWN`` (peer down) ..."""
        out = _run(["ip", "-j", "-n", self.namespace(side), "link", "show", "dev", self.interface(side)]).stdout
        state: str = json.loads(out)[0]["operstate"]
        return state

    def shape(
        self,
        *,
        rate_kbit: float | None = None,
        delay_ms: float | None = None,
        jitter_ms: float = 0.0,
        side: Literal["device", "server", "both"] = "both",
        burst_bytes: int | None = None,
        queue_latency_ms: float = 200.0,
    ) -> None:
        """Shape egress of one or both ends: tbf for ``rate_kbit``, netem for ``delay_ms`` (needs
        ``sch_netem``; raises ``NetnsUnavailableError`` without it). Replaces earlier shaping."""
        if rate_kbit is not None and rate_kbit <= 0:
            raise ConfigError(f"rate_kbit must be > 0, got {rate_kbit}")
        if delay_ms is not None and not netem_available():
            raise NetnsUnavailableError("this kernel has no sch_netem qdisc, so no netem delay; use FaultProxy latency")
        sides: tuple[Side, ...] = ("device", "server") if side == "both" else (side,)
        for one in sides:
            ns, interface = self.namespace(one), self.interface(one)
            tc = ["ip", "netns", "exec", ns, "tc", "qdisc"]
            _run([*tc, "del", "dev", interface, "root"], check=False)
            parent = ["root"]
            if delay_ms is not None:
                netem = [*tc, "add", "dev", interface, "root", "handle", "1:", "netem", "delay", f"{delay_ms}ms"]
                _run(netem + ([f"{jitter_ms}ms"] if jitter_ms else []))
                parent = ["parent", "1:1"]
            if rate_kbit is not None:
                # burst must hold at least one MTU-sized packet plus what the timer tick lets through
                burst = burst_bytes or max(4096, int(rate_kbit * 1000 / 8 / 250))
                _run([*tc, "add", "dev", interface, *parent, "handle", "10:", "tbf", "rate", f"{rate_kbit}kbit",
                      "burst", str(burst), "latency", f"{queue_latency_ms}ms"])  # fmt: skip

    def unshape(self) -> None:
        for side in ("device", "server"):
            ns, interface = self.namespace(side), self.interface(side)
            _run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", interface, "root"], check=False)

    def qdiscs(self, side: Side) -> str:
        """``tc qdisc show`` of one end (for tests and reports)."""
        return _run(
            ["ip", "netns", "exec", self.namespace(side), "tc", "qdisc", "show", "dev", self.interface(side)]
        ).stdout

    # ---- running things inside -------------------------------------------------------------------

    def command(self, side: Side, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(side), *argv]

    def popen(self, side: Side, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process inside a namespace; ``close()`` stops it if it is still running."""
        process = subprocess.Popen(self.command(side, argv), **kwargs)
        self._processes.append(process)
        return process

    def run(
        self, side: Side, argv: Sequence[str], *, timeout: float = 60, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(side, argv), timeout=timeout, **kwargs)

    def call_in(self, side: Side, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on a fresh thread that entered the namespace; return its result.

        Only what that thread creates lands in the namespace (a socket keeps its namespace
        for life); code that opens sockets on threads of its own (gRPC) needs ``popen``."""
        return call_in_namespace(self.namespace(side), fn)

    def socket_in(self, side: Side, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket that lives in a namespace."""
        return self.call_in(side, lambda: socket.socket(family, kind))


def call_in_namespace(ns: str, fn: Callable[[], _T]) -> _T:
    results: list[_T] = []
    errors: list[BaseException] = []

    def enter_and_call() -> None:
        # setns changes only this OS thread's namespace, and the thread ends right after
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns into {ns}: {os.strerror(errno)}")
            finally:
                os.close(fd)
            results.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=enter_and_call, name=f"setns-{ns}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]
