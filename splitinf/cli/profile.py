"""``splitinf profile MODEL.onnx -o PROFILE.json [--role device|server|both] [--shape NAME=DIMS ...]
[--samples NPZ]``: time on this machine what it runs of each cut, on the user's inputs (the profile
records their shapes).

``--role device`` (on the Pi) times the heads, the codecs' encoding, building the request, the full
model and the fallback; ``--role server`` the tails, decoding and parsing the request. The default,
``both``, times everything and gives a profile either side accepts: one machine, or the old
behaviour. `splitinf plan` takes a device-role profile as ``--device`` and a server-role one as
``--server`` and refuses them swapped. Parts are kept in ``PROFILE.json.partial`` as they are
measured: after Ctrl-C or a crash, the same command resumes.

``splitinf profile PLAN_DIR --server HOST:PORT -o PROFILE.json [--base SERVER_PROFILE.json]``: a
server-role profile read from the running tail server instead (:mod:`splitinf.tools.liveprofile`):
each of the plan's tails as the server runs it, with its own settings and load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from splitinf.cli.options import add_input_options, input_shapes


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="time the model's heads (--role device) or tails (--role server) on this machine",
        description=(
            "Time the model on this machine for `splitinf plan`: the segments between candidate cuts (a head is "
            "the sum of those before its cut, a tail of those after), each wire codec's own op, the request's "
            "(de)serialisation, and a few whole heads or tails to check the sums. Parts are kept in "
            "OUTPUT.partial as they are measured; rerun the same command to resume."
        ),
    )
    parser.add_argument("model", help="the ONNX model (with --server: the plan directory the server serves)")
    parser.add_argument("-o", "--output", required=True, help="where to write the profile JSON")
    parser.add_argument(
        "--role",
        choices=("device", "server", "both"),
        default="both",
        help="device: heads, encoding, the full model and the fallback (run it on the Pi); server: tails and "
        "decoding (run it on the server); both (default): everything, a profile either side accepts",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="onnxruntime intra-op threads as the runtime/server uses them (0: onnxruntime default; default 1)",
    )
    parser.add_argument("--cuts", default="", help="comma-separated cut ids to time (default: every cut)")
    parser.add_argument("--codecs", default="fp32,fp16,int8", help="wire codecs to time (default fp32,fp16,int8)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per part (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument(
        "--passes", type=int, default=2, help="separate sweeps; each part keeps its quietest (default 2)"
    )
    parser.add_argument(
        "--pause-ms",
        type=float,
        default=0.0,
        help="idle this long before each timed run (default 0): on a device throttled by a CPU quota or a power "
        "budget, the gap between its requests (at least a quota period), so runs start as requests do",
    )
    parser.add_argument("--fallback", help="also time this small fallback model (device role)")
    parser.add_argument(
        "--quantize",
        choices=("none", "int8"),
        default="none",
        help="also time each head with weights and the fallback as int8 variants, for `plan --quantize int8`",
    )
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="read the tails' times from this running tail server's statistics (the model argument is then the "
        "plan directory it serves) instead of timing them here; the profile has the server role",
    )
    parser.add_argument(
        "--base",
        help="with --server: a server-role profile of the same model for the cuts the server does not hold",
    )
    parser.add_argument("--token-file", help="with --server: file holding the bearer token the server requires")
    parser.add_argument("--tls-ca", help="with --server: connect over TLS, trusting this CA file")
    parser.add_argument(
        "--min-requests",
        type=int,
        default=20,
        help="with --server: a tail that ran fewer requests first gets this many of zeros (default 20)",
    )
    parser.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is no tty")
    add_input_options(parser, "real inputs to time on (the first); .npz keyed by input name")
    parser.set_defaults(handler=run)


def run_live(args: argparse.Namespace) -> int:
    from splitinf.contract.files import write_json_atomic
    from splitinf.contract.secrets import read_token
    from splitinf.edge.client import InferenceClient
    from splitinf.edge.tls import ClientTLS
    from splitinf.errors import UsageError
    from splitinf.tools.liveprofile import live_server_profile

    if args.role == "device":
        raise UsageError("--server reads the server's tails; it cannot make a device profile")
    if args.min_requests < 1:
        raise UsageError("--min-requests must be at least 1")
    with InferenceClient(
        args.server,
        tls=ClientTLS(ca_file=Path(args.tls_ca)) if args.tls_ca else None,
        token=read_token(args.token_file) if args.token_file else None,
    ) as client:
        profile = live_server_profile(
            args.model, args.server, client=client, min_requests=args.min_requests, base=args.base
        )
    write_json_atomic(args.output, profile)
    tails = sum(len(c.get("codecs", {})) for c in profile["cuts"])
    print(f"wrote {args.output} (server role, live from {args.server}): {tails} cut/codec entries")
    return 0


def run(args: argparse.Namespace) -> int:
    from splitinf.offline.profiling import journal_path, profile_file

    if args.server:
        return run_live(args)
    try:
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
            role=args.role,
            quantize=args.quantize,
            pause_s=args.pause_ms / 1e3,
        )
    except KeyboardInterrupt:
        kept = journal_path(args.output)
        if kept.is_file():
            print(
                f"\nsplitinf profile: interrupted; the parts timed so far are kept in {kept}: "
                "rerun the same command to resume",
                file=sys.stderr,
            )
        raise
    for note in profile["notes"]:
        print(f"note: {note}", file=sys.stderr)
    at = ", ".join(f"{n}={'x'.join(map(str, i['shape'])) or '()'}" for n, i in profile["inputs"]["inputs"].items())
    resumed = f", {profile['resumed_parts']} parts resumed" if profile["resumed_parts"] else ""
    check = profile["check"]
    checked = (
        f"; segment sums within {check['max_abs_error']:.1%} of {len(check['parts'])} whole parts"
        if check["parts"]
        else ""
    )
    seconds = profile["model_seconds"]["median"] * 1e3
    what = "full model" if profile["role"] != "server" else "all tails from the first cut"
    print(
        f"wrote {args.output} ({profile['role']} role): {len(profile['cuts'])} cuts at {at}, {what} "
        f"{seconds:.3f} ms{checked}{resumed}"
    )
    return 0
