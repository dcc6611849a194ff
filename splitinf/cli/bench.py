"""``splitinf bench``: emulate a Pi (CPU-limited device process) and an emulated link, and measure.

Writes ``bench.md`` (the table, with this command and the emulation settings at the top),
``bench.json`` and ``bench.svg`` into ``--out``. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from splitinf.cli.options import add_input_options, input_shapes


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark split inference on an emulated device and link (local, remote, planned, best)",
        description=(
            "Run the device in its own CPU-limited process (a cgroup CPU quota), the tail server unlimited, "
            "and the link between them through a bandwidth-capped, delayed proxy; measure everything local, "
            "everything remote, the planned option and the best option over a grid of bandwidths and RTTs, "
            "framework overhead against a bare gRPC echo, failover and recovery around a cut, and the tail "
            "server's throughput."
        ),
    )
    parser.add_argument("--model", default=None, help="resnet50 (default), digits, or PATH to an ONNX model")
    parser.add_argument("--fallback", help="with --model PATH: the small fallback model (for the failover run)")
    add_input_options(parser, "with --model PATH: real inputs (.npz keyed by input name); the first is measured")
    parser.add_argument("--bandwidths", help="comma-separated Mbit/s (default 1,10,100)")
    parser.add_argument("--rtts", help="comma-separated round-trip times in ms (default 2,20,80)")
    parser.add_argument(
        "--budget-ms", type=float, default=None, help="latency budget the planned option must fit (default 250)"
    )
    parser.add_argument("--device-cpus", type=float, default=None, help="device CPU quota in CPUs (default 0.15)")
    parser.add_argument("--device-threads", type=int, default=None, help="device onnxruntime threads (default 1)")
    parser.add_argument("--cpu-period-ms", type=float, default=10.0, help="CFS period of the quota (default 10 ms)")
    parser.add_argument("--no-cpu-limit", action="store_true", help="run the device unlimited (stated in every output)")
    parser.add_argument("--requests", type=int, default=None, help="requests per option and grid point (default 10)")
    parser.add_argument("--cuts", help="comma-separated cut ids or tensor names (default: chosen automatically)")
    parser.add_argument("--codecs", help="wire codecs (default fp32,fp16,int8)")
    parser.add_argument("--max-cell-seconds", type=float, default=None, help="time cap per option and grid point")
    parser.add_argument("--link", choices=("proxy", "netns"), default="proxy", help="link emulation (default proxy)")
    parser.add_argument("--no-failover", action="store_true", help="skip the failover/recovery measurement")
    parser.add_argument(
        "--offline-server-profile",
        action="store_true",
        help="predict with the offline server profile only (default: plan again with the running server's tail "
        "times, read by `splitinf profile PLAN --server`)",
    )
    parser.add_argument("--out", default="bench-out", help="output directory (default ./bench-out)")
    parser.add_argument("--quick", action="store_true", help="tiny run: digits model, few requests, in seconds")
    parser.set_defaults(handler=run)


def _numbers(text: str | None, flag: str) -> tuple[float, ...] | None:
    from splitinf.errors import UsageError

    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise UsageError(f"{flag} takes comma-separated numbers, e.g. 1,10,100; got {text!r}") from exc
    if not values or any(not v > 0 for v in values):
        raise UsageError(f"{flag} needs positive numbers, e.g. 1,10,100; got {text!r}")
    return values


_FLAGS = (
    "quick", "model", "fallback", "shape", "samples", "bandwidths", "rtts", "budget_ms", "device_cpus",
    "device_threads", "cpu_period_ms", "no_cpu_limit", "requests", "cuts", "codecs", "max_cell_seconds", "link",
    "no_failover", "offline_server_profile", "out",
)  # fmt: skip


def _given_flags(args: argparse.Namespace) -> list[str]:
    """The command line that ran, rebuilt from the parsed flags (defaults left out)."""
    argv = ["bench"]
    for name in _FLAGS:
        value = getattr(args, name)
        unset = value is None or value is False or value == []
        if unset or (name, value) in (("cpu_period_ms", 10.0), ("link", "proxy")):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, list):  # a repeatable flag
            argv += [part for item in value for part in (flag, str(item))]
            continue
        argv += [flag] if value is True else [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return argv


def _positive_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The numeric flags, checked, as BenchConfig fields."""
    from splitinf.errors import UsageError

    overrides: dict[str, object] = {}
    for flag, key, text in (("--bandwidths", "bandwidths_mbit", args.bandwidths), ("--rtts", "rtts_ms", args.rtts)):
        values = _numbers(text, flag)
        if values is not None:
            overrides[key] = values
    if args.budget_ms is not None:
        if not args.budget_ms > 0:
            raise UsageError(f"--budget-ms must be > 0, got {args.budget_ms:g}")
        overrides["budget_s"] = args.budget_ms * 1e-3
    if args.device_cpus is not None:
        if not args.device_cpus > 0:
            raise UsageError(f"--device-cpus must be > 0, got {args.device_cpus}")
        overrides["device_cpus"] = args.device_cpus
    if args.no_cpu_limit:
        overrides["device_cpus"] = None
    if args.device_threads is not None:
        if args.device_threads < 1:
            raise UsageError(f"--device-threads must be >= 1, got {args.device_threads}")
        overrides["device_threads"] = args.device_threads
    if args.requests is not None:
        if args.requests < 3:
            raise UsageError(f"--requests must be >= 3 (medians and p90 need a few), got {args.requests}")
        overrides["requests"] = args.requests
    if args.max_cell_seconds is not None:
        overrides["max_cell_s"] = args.max_cell_seconds
    return overrides


def _model_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The model, its cuts and codecs, as BenchConfig fields."""
    from splitinf.errors import UsageError

    if args.model not in (None, "resnet50", "digits") and not Path(args.model).is_file():
        raise UsageError(f"--model {args.model!r} is neither resnet50, digits nor an existing ONNX file")
    overrides: dict[str, object] = {}
    if args.model is not None:
        overrides["model"] = args.model
    if args.fallback is not None:
        overrides["fallback"] = args.fallback
    if args.shape or args.samples:
        if args.model in (None, "resnet50", "digits"):
            raise UsageError("--shape and --samples go with --model PATH (resnet50 and digits have fixed inputs)")
        overrides["shapes"] = {name: tuple(dims) for name, dims in input_shapes(args).items()}
        overrides["samples"] = args.samples
    if args.cuts:
        overrides["cuts"] = tuple(c.strip() for c in args.cuts.split(",") if c.strip())
    if args.codecs:
        from splitinf.offline.codecs import parse_codecs

        overrides["codecs"] = tuple(parse_codecs(args.codecs))
    return overrides


def run(args: argparse.Namespace) -> int:
    from splitinf.tools.bench import BenchConfig, command_line, quick_config, run_bench

    overrides = {**_model_overrides(args), **_positive_overrides(args)}
    if args.no_failover:
        overrides["failover"] = False
    if args.offline_server_profile:
        overrides["server_live"] = False
    overrides["cpu_period_us"] = int(round(args.cpu_period_ms * 1000))
    overrides["link"] = args.link
    overrides["command"] = command_line(_given_flags(args))
    out = Path(args.out)
    config = quick_config(out, **overrides) if args.quick else BenchConfig(out=out, **overrides)  # type: ignore[arg-type]
    results = run_bench(config)
    print((out / "bench.md").read_text())
    print(f"wall time {results['wall_s']:.0f} s; outputs in {out}")
    return 0
