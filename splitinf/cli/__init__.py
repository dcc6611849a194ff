"""The ``splitinf`` command: argparse front end.

Each subcommand lives in its own module under ``splitinf.cli`` with a
``register(subparsers)`` function that adds its parser and sets ``handler``
(a function taking the parsed ``argparse.Namespace`` and returning an exit status).
Heavy imports (onnxruntime, grpc) happen inside handlers so ``--help`` stays fast.

Exit statuses: 0 success, 1 a failure while doing the work, 2 a usage or environment
error (bad arguments, bad input files, unwritable output, a port in use), 130 interrupted,
141 (128 + SIGPIPE, as ``yes | head`` reports) when the reader of the output went away.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence

from splitinf import __version__
from splitinf.errors import OutputError, SplitinfError, UsageError

# In the order `splitinf --help` lists them: the data flow, then the tools.
SUBCOMMAND_MODULES = (
    "cuts",
    "split",
    "profile",
    "plan",
    "serve",
    "triton",
    "run",
    "demo",
    "bench",
    "proxy",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="splitinf",
        description="Edge-cloud split inference: run a model's head on the device, its tail on a server.",
    )
    parser.add_argument("--version", action="version", version=f"splitinf {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        module_name = f"splitinf.cli.{name}"
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        status: int = args.handler(args)
        sys.stdout.flush()  # a closed pipe surfaces here, not in the interpreter's exit flush
    except BrokenPipeError:
        # Python docs, "Note on SIGPIPE": point stdout at devnull so the exit flush stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (UsageError, OutputError) as exc:
        print(f"splitinf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except SplitinfError as exc:
        print(f"splitinf {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the environment (files, sockets), not splitinf: no traceback
        print(f"splitinf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"splitinf {args.command}: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
