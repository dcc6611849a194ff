"""``splitinf demo``: split, serve, run, lose the network, keep answering, recover."""

from __future__ import annotations

import argparse
import json
import logging


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole system on loopback in about a minute (no files kept, no network beyond loopback)",
        description=(
            "Partition and plan the shipped digits model, start a tail server on a free loopback port, and run the "
            "device runtime over the held-out digits through a fault proxy that goes healthy -> severed -> healed."
        ),
    )
    parser.add_argument(
        "--phase-seconds",
        default="10,12,20",
        metavar="H,S,R",
        help="seconds of the healthy, severed and healed phases (default 10,12,20)",
    )
    parser.add_argument("--rate", type=float, default=25.0, help="requests per second (default 25)")
    parser.add_argument("--budget-ms", type=float, default=100.0, help="latency budget per request (default 100)")
    parser.add_argument("--json", metavar="FILE", help="also write the per-phase results as JSON to FILE")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from splitinf.errors import UsageError
    from splitinf.tools.demo import DemoSettings, run_demo

    try:
        phases = tuple(float(s) for s in args.phase_seconds.split(","))
    except ValueError:
        raise UsageError(
            f"--phase-seconds {args.phase_seconds!r} is not three numbers; use e.g. --phase-seconds 10,12,20"
        ) from None
    if len(phases) != 3:
        raise UsageError(f"--phase-seconds takes three durations (healthy,severed,healed), got {len(phases)}")
    settings = DemoSettings(
        phase_seconds=phases,
        rate_per_s=args.rate,
        budget_s=args.budget_ms / 1000,
    )
    if args.verbose == 0:
        # The demo prints each mode change itself; the runtime's JSON log lines of them are for -v.
        logging.getLogger("splitinf.edge.runtime").setLevel(logging.ERROR)
    reports = run_demo(settings)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"phases": [r.to_json() for r in reports]}, f, indent=2)
    return 0
