"""``splitinf cuts MODEL.onnx [--shape NAME=DIMS ...] [--samples NPZ] [--json]``: list the candidate
cuts of a model, input to output, and why any part of it offers none.

The JSON form (``--json``) is the contract other tools read::

    {"model": "resnet.onnx", "sha256": "...",
     "inputs": {"source": "shapes", "inputs": {"x": {"dtype": "float32", "shape": [1, 3, 224, 224]}}},
     "cuts": [{"id": "x", "tensors": [{"name": "x", "dtype": "float32", "shape": ["N", 3, 224, 224]}],
               "bytes": 602112, "head_nodes": 0, "total_nodes": 120, "head_flops": 0, ...}, ...],
     "uncuttable": ["If node 'If_0' runs whole on one side: ..."]}

``bytes`` and FLOPs are at the inputs used (the first of ``--samples``, else ``--shape``; without
either, symbolic dimensions count as 1, with a warning). The model runs once on those inputs when
static shape inference cannot type some tensor, so cuts are offered there too.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from splitinf.cli.options import add_input_options, input_shapes


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cuts",
        help="list the places a model can be cut, with crossing tensors and bytes",
        description=(
            "List the candidate cuts of MODEL from input to output: the tensors that cross, the bytes per "
            "sample, and the head's share of nodes, FLOPs and parameters. Cut ids go to `splitinf split --cut`."
        ),
    )
    parser.add_argument("model", metavar="MODEL.onnx", help="the ONNX model (external data is read from beside it)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    add_input_options(parser)
    parser.set_defaults(handler=run)


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _share(part: int, total: int) -> str:
    return f"{100.0 * part / total:5.1f}%" if total else "    -"


def run(args: argparse.Namespace) -> int:
    from splitinf.contract.files import sha256_file
    from splitinf.errors import InputError
    from splitinf.offline.graph import GraphView, load_model
    from splitinf.offline.inputs import model_inputs

    model = load_model(args.model)
    shapes = input_shapes(args)
    static = GraphView(model)
    try:
        inputs = model_inputs(static.input_specs(), samples=args.samples, shapes=shapes)
    except InputError:
        if args.samples or shapes:
            raise
        inputs = None  # no random values for such inputs (strings): static shape inference alone
    view = GraphView(model, inputs.first) if inputs is not None else static
    cuts = view.cuts()
    reasons = view.uncuttable()
    if args.json:
        listed = {
            "model": args.model,
            "sha256": sha256_file(args.model),
            "inputs": inputs.to_json() if inputs is not None else None,
            "cuts": [c.to_json() for c in cuts],
            "uncuttable": reasons,
        }
        print(json.dumps(listed))
        return 0
    rows = []
    for index, cut in enumerate(cuts):
        tensors = ", ".join(f"{t.name} {t.dtype}[{','.join(str(d) for d in t.shape)}]" for t in cut.tensors)
        rows.append(
            (
                str(index),
                cut.id,
                _human_bytes(cut.bytes_per_sample),
                f"{cut.head_nodes}/{cut.total_nodes}",
                _share(cut.head_flops, cut.total_flops),
                _share(cut.head_params, cut.total_params),
                tensors,
            )
        )
    header = ("#", "id", "bytes/sample", "head nodes", "head FLOPs", "head params", "tensors")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    for reason in reasons:
        print(f"no cut: {reason}", file=sys.stderr)
    shown = inputs.shapes() if inputs is not None else {}
    at = ", ".join(f"{n}={'x'.join(map(str, s)) or '()'}" for n, s in shown.items()) or "the model's static shapes"
    given = f" --samples {args.samples}" if args.samples else "".join(f" --shape {s}" for s in args.shape)
    print(
        f"{len(cuts)} cuts of {args.model} at {at} ({inputs.source if inputs else 'no inputs'}); "
        f"split one with `splitinf split {args.model} --cut ID -o OUTDIR --verify{given}`"
    )
    return 0
