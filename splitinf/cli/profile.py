"""``splitinf profile MODEL.onnx -o PROFILE.json``: time each cut's head and tail on this machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    parser.add_argument("--fallback", help="also time this small fallback model")
    parser.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is no tty")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from splitinf.errors import UsageError
    from splitinf.graph import load_model
    from splitinf.plan import sha256_file, write_json_atomic
    from splitinf.profiling import profile_model

    if args.threads < 0 or args.repeats < 1 or args.warmup < 0:
        raise UsageError("--threads must be >= 0, --repeats >= 1 and --warmup >= 0")
    output = Path(args.output)
    if not output.parent.is_dir():
        raise UsageError(f"the directory of {output} does not exist; create it or choose another -o")
    model = load_model(args.model)
    fallback = None
    if args.fallback:
        fallback = (load_model(args.fallback), Path(args.fallback).stem, sha256_file(args.fallback))
    cut_ids = [c.strip() for c in args.cuts.split(",") if c.strip()] or None
    profile = profile_model(
        model,
        name=Path(args.model).stem,
        sha256=sha256_file(args.model),
        threads=args.threads,
        cut_ids=cut_ids,
        codecs=args.codecs,
        repeats=args.repeats,
        warmup=args.warmup,
        fallback=fallback,
        progress=args.progress or sys.stderr.isatty(),
    )
    write_json_atomic(output, profile)
    print(f"wrote {output}: {len(profile['cuts'])} cuts, full model {profile['model_seconds']['median'] * 1e3:.3f} ms")
    return 0
