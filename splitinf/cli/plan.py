"""``splitinf plan MODEL.onnx --device DEV.json --server SRV.json -o PLANDIR``: build a plan directory.

A thin adapter over :func:`splitinf.offline.planner.plan_model`, which reads the profiles, applies the
codecs, prices the options and writes the layout of :mod:`splitinf.contract.plan` with ``report.md`` and
``latency.svg``.

Samples (``--samples``, or its older name ``--calibration``): an .npz with one array per model input,
samples stacked on axis 0 (an array of the input's rank gives batch-1 slices; one rank more gives one
sample per entry), and optionally ``labels`` (one class per sample) for real accuracy instead of
agreement. Without samples the planner runs random inputs at ``--shape`` (default: the shapes the
profiles were measured at); plan.json records the shapes, and the device warns on inputs of others.
"""

from __future__ import annotations

import argparse
import sys

from splitinf.cli.options import add_input_options, input_shapes
from splitinf.contract.plan import DEFAULT_BUDGET_S, DEFAULT_MAX_ACCURACY_DROP


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="choose the cuts and codecs worth holding and write a plan directory",
        description=(
            "Combine a device profile and a server profile of MODEL into a plan: device heads, fallback, "
            "server tails in a V2 model repository, plan.json (options, expected latencies, budget), report.md and "
            "latency.svg."
        ),
    )
    parser.add_argument("model", help="the ONNX model (the one both profiles measured)")
    parser.add_argument("--device", required=True, help="profile written by `splitinf profile` on the device")
    parser.add_argument("--server", required=True, help="profile written by `splitinf profile` on the server")
    parser.add_argument("--fallback", help="the small local model the device answers from when the network fails")
    parser.add_argument("--codecs", help="wire codecs to weigh (default fp32,fp16 and int8 when --calibration)")
    parser.add_argument(
        "--quantize",
        choices=("none", "int8"),
        default="none",
        help="also weigh int8 heads and an int8 fallback (onnxruntime.quantization, calibrated on --samples); "
        "the device profile must come from `splitinf profile --quantize int8`",
    )
    add_input_options(
        parser,
        "sample inputs (.npz, stacked on axis 0, optionally 'labels'): calibrate int8, measure accuracy, "
        "and give the shapes the plan is at",
    )
    parser.add_argument("--calibration", dest="samples", help="the older name of --samples")
    parser.add_argument("--held-out", help=".npz of held-out samples (default: the last quarter of --calibration)")
    parser.add_argument("--max-candidates", type=int, default=4, help="cuts held besides full offload (default 4)")
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=DEFAULT_MAX_ACCURACY_DROP,
        help="drop options whose accuracy is more than this below the full model's (default 0.01)",
    )
    parser.add_argument("--bandwidths", help="comma-separated grid in Mbit/s (default 0.25..1000, log-spaced)")
    parser.add_argument("--rtts", help="comma-separated grid in ms (default 1,5,10,20,50,100,200,300)")
    parser.add_argument("--reference-rtt", type=float, default=20.0, help="RTT in ms for the report's chart")
    parser.add_argument(
        "--budget-ms",
        type=float,
        default=DEFAULT_BUDGET_S * 1e3,
        help="latency budget per request the report's planned choices fit (default 250, the device's default)",
    )
    parser.add_argument(
        "--no-local",
        action="store_true",
        help="the full model does not fit on the device (heads are then capped at params:0.5 unless "
        "--max-device-share says otherwise)",
    )
    parser.add_argument(
        "--max-device-share",
        metavar="F",
        help="refuse cuts whose head holds more than this fraction of the model's FLOPs (0.5 or flops:0.5) "
        "or of its parameters (params:0.5); below 1 the full model is not held either",
    )
    parser.add_argument(
        "--progress", action="store_true", help="show the progress bar (with an ETA) even when stderr is no tty"
    )
    parser.add_argument(
        "--hold-all",
        action="store_true",
        help="hold every evaluated option, not only the best few (for measuring them all)",
    )
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for calibration runs")
    parser.add_argument("-o", "--output", required=True, help="the plan directory to write")
    parser.set_defaults(handler=run)


def _floats(text: str | None, scale: float, flag: str) -> tuple[float, ...] | None:
    from splitinf.errors import UsageError

    if not text:
        return None
    try:
        values = tuple(float(v) * scale for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise UsageError(f"{flag} takes comma-separated numbers, got {text!r}") from exc
    if not values or any(v <= 0 for v in values):
        raise UsageError(f"{flag} needs positive numbers, got {text!r}")
    return tuple(sorted(values))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from splitinf.errors import UsageError
    from splitinf.offline.device_share import parse_device_share
    from splitinf.offline.planner import plan_model

    if args.max_candidates < 0:
        raise UsageError(f"--max-candidates must be >= 0, got {args.max_candidates}")
    if not args.budget_ms > 0:
        raise UsageError(f"--budget-ms must be > 0, got {args.budget_ms:g}")
    plan = plan_model(
        args.model,
        device_profile=args.device,
        server_profile=args.server,
        output=args.output,
        fallback=args.fallback,
        calibration=args.samples,
        held_out=args.held_out,
        codecs=args.codecs,
        quantize=args.quantize,
        max_candidates=args.max_candidates,
        max_accuracy_drop=args.max_accuracy_drop,
        bandwidths_bps=_floats(args.bandwidths, 1e6, "--bandwidths"),
        rtts_s=_floats(args.rtts, 1e-3, "--rtts"),
        reference_rtt_s=args.reference_rtt * 1e-3,
        budget_s=args.budget_ms * 1e-3,
        include_local=not args.no_local,
        hold_all=args.hold_all,
        threads=args.threads,
        shapes=input_shapes(args),
        max_device_share=None if args.max_device_share is None else parse_device_share(args.max_device_share),
        progress=args.progress or sys.stderr.isatty(),
    )
    held = [o.id for o in plan.split_options]
    evaluated = plan.profiles.get("evaluated", {}).get("options", len(held))
    target = Path(args.output)
    for note in plan.profiles.get("evaluated", {}).get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    shown = ", ".join(held[:6]) + (f", ... {len(held) - 6} more" if len(held) > 6 else "")
    print(
        f"wrote {target}: {len(held)} split options held of {evaluated} evaluated ({shown}); see {target / 'report.md'}"
    )
    return 0
