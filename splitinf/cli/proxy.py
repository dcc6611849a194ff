"""``splitinf proxy``: a TCP fault proxy in front of a server, steerable while it runs.

It prints ``listening HOST:PORT`` (and ``control HOST:PORT`` with ``--control``)
on stdout once bound, then runs until SIGINT/SIGTERM.

The control port speaks one JSON object per line, one JSON reply per line::

    {"op": "set", "latency_ms": 80, "jitter_ms": 10, "direction": "both"}
    {"op": "set", "blackhole": true, "direction": "upstream"}
    {"op": "set", "upstream": {"rate_kbit": 1000}, "downstream": {"latency_ms": 20}}
    {"op": "set", "reset": true}
    {"op": "clear"}            {"op": "get"}            {"op": "stats"}
    {"op": "reset_connections"}
    {"op": "schedule", "phases": [{"duration_s": 2, "blackhole": true}, {"duration_s": 5}], "repeat": null}

Replies are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. Fault keys:
latency_ms, jitter_ms, rate_kbit, blackhole, pause, close_after_bytes (per direction),
reset (connection-wide). ``set`` replaces all settings; unspecified faults are off.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from splitinf.errors import ConfigError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "proxy",
        help="TCP fault proxy: latency, jitter, bandwidth cap, black hole, resets, cuts",
        description=(
            "Forward TCP connections to TARGET while injecting faults; change them while it runs through "
            "the JSON-lines control port (see the module docstring of splitinf.cli.proxy)."
        ),
    )
    parser.add_argument("--target", required=True, metavar="HOST:PORT", help="where connections are forwarded")
    parser.add_argument(
        "--listen", default="127.0.0.1:0", metavar="HOST:PORT", help="listen address (default 127.0.0.1:0)"
    )
    parser.add_argument(
        "--control", metavar="HOST:PORT", help="also serve the JSON-lines control protocol (port 0 for any)"
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added one-way delay per chunk")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="uniform +- jitter on the delay")
    parser.add_argument("--rate-kbit", type=float, default=None, help="bandwidth cap (token bucket), kbit/s")
    parser.add_argument("--blackhole", action="store_true", help="accept, then silently drop the bytes")
    parser.add_argument("--pause", action="store_true", help="hold the bytes until the pause is lifted")
    parser.add_argument("--close-after-bytes", type=int, default=None, metavar="N", help="close after N bytes")
    parser.add_argument("--reset", action="store_true", help="reset (RST) every connection")
    parser.add_argument(
        "--direction",
        choices=("both", "upstream", "downstream"),
        default="both",
        help="which way the faults apply (upstream = client to server)",
    )
    parser.add_argument(
        "--schedule",
        type=Path,
        metavar="FILE.json",
        help='toggle faults: {"phases": [{"duration_s": 2, "blackhole": true}, {"duration_s": 3}], "repeat": null}',
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the jitter")
    parser.set_defaults(handler=run_proxy)


def run_proxy(args: argparse.Namespace) -> int:
    from splitinf.tools.faults.proxy import FaultProxy, FaultSettings, parse_host_port, parse_schedule

    target = parse_host_port(args.target, what="--target")
    listen_host, listen_port = parse_host_port(args.listen, what="--listen")
    control_port = None
    if args.control is not None:
        control_host, control_port = parse_host_port(args.control, what="--control")
        if control_host != listen_host:
            raise ConfigError(f"--control must use the --listen host {listen_host}, got {control_host}")
    settings = FaultSettings.make(
        direction=args.direction,
        reset=args.reset,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        rate_kbit=args.rate_kbit,
        blackhole=args.blackhole,
        pause=args.pause,
        close_after_bytes=args.close_after_bytes,
    )
    schedule = None
    if args.schedule is not None:
        try:
            schedule = parse_schedule(json.loads(args.schedule.read_text()))
        except OSError as exc:
            raise ConfigError(f"cannot read --schedule {args.schedule}: {exc.strerror}") from exc
        except ValueError as exc:
            raise ConfigError(f"--schedule {args.schedule} is not JSON: {exc}") from exc

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        proxy = FaultProxy(
            target, listen_host=listen_host, listen_port=listen_port, control_port=control_port, settings=settings
        ).start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.listen} / {args.control}: {exc.strerror}") from exc
    try:
        if schedule is not None:  # before the ports are announced, so no client sees the link unscheduled
            phases, repeat = schedule
            proxy.schedule(phases, repeat=repeat)
        print(f"listening {proxy.address}", flush=True)
        if proxy.control_port is not None:
            print(f"control {listen_host}:{proxy.control_port}", flush=True)
        stop.wait()
    finally:
        proxy.stop()
    print("stopped", file=sys.stderr, flush=True)
    return 0
