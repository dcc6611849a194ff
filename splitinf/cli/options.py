"""The command-line options several commands share: the inputs to run a model on.

``--shape NAME=1x3x320x448`` (repeatable) gives an input's size where the model leaves it dynamic;
``--samples FILE.npz`` gives real inputs (see :mod:`splitinf.contract.samples`), used wherever a
model is run. Without either, random inputs with dynamic dimensions 1 are used, with a warning.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_input_options(parser: argparse.ArgumentParser, samples_help: str | None = None) -> None:
    parser.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME=DIMS",
        help="an input's size where the model leaves it dynamic, e.g. x=1x3x320x448 (repeatable; NAME= for a scalar)",
    )
    parser.add_argument(
        "--samples",
        metavar="DIR_OR_NPZ",
        help=samples_help
        or "real inputs to run the model on (.npz keyed by input name, or a directory of INPUT.npy/.npz)",
    )


def input_shapes(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed ``--shape`` options (InputError for a malformed one)."""
    from splitinf.offline.inputs import parse_shapes

    return dict(parse_shapes(args.shape))
