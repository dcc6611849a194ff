"""``splitinf profile MODEL.onnx -o PROFILE.json [--shape NAME=DIMS ...] [--samples NPZ]``: time each
cut's head and tail on this machine, on the user's inputs (the profile records their shapes)."""

from __future__ import annotations

import argparse
import sys

from splitinf.cli.options import add_input_options, input_shapes


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="time the model's heads and tails on this machine (run it on the device and on the server)",
        description=(
            "Time the full model and each candidate cut's head and tail (with each wire codec) on this "
            "machine, with warm-up and repeats, and write a profile for `splitinf plan`."
        ),
    )
    parser.add_argument("model", help="the ONNX model")
    parser.add_argument("-o", "--output", required=True, help="where to write the profile JSON")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="onnxruntime intra-op threads as the runtime/server uses them (0: onnxruntime default; default 1)",
    )
    parser.add_argument("--cuts", default="", help="comma-separated cut ids to time (default: every cut)")
    parser.add_argument("--codecs", default="fp32,fp16,int8", help="wire codecs to time (default fp32,fp16,int8)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per head/tail (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument(
        "--passes", type=int, default=2, help="separate sweeps; each item keeps its quietest (default 2)"
    )
    parser.add_argument("--fallback", help="also time this small fallback model")
    parser.add_argument(
        "--quantize",
        choices=("none", "int8"),
        default="none",
        help="also time each head with weights and the fallback as int8 variants, for `plan --quantize int8`",
    )
    parser.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is no tty")
    add_input_options(parser, "real inputs to time on (the first; up to 8 calibrate int8); .npz keyed by input name")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from splitinf.offline.profiling import profile_file

    profile = profile_file(
        args.model,
        args.output,
        threads=args.threads,
        cut_ids=[c.strip() for c in args.cuts.split(",") if c.strip()] or None,
        codecs=args.codecs,
        repeats=args.repeats,
        warmup=args.warmup,
        passes=args.passes,
        fallback=args.fallback,
        progress=args.progress or sys.stderr.isatty(),
        samples=args.samples,
        shapes=input_shapes(args),
        quantize=args.quantize,
    )
    for note in profile["notes"]:
        print(f"note: {note}", file=sys.stderr)
    full_ms = profile["model_seconds"]["median"] * 1e3
    at = ", ".join(f"{n}={'x'.join(map(str, i['shape'])) or '()'}" for n, i in profile["inputs"]["inputs"].items())
    print(f"wrote {args.output}: {len(profile['cuts'])} cuts at {at}, full model {full_ms:.3f} ms")
    return 0
