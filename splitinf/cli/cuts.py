"""``splitinf cuts MODEL.onnx [--json]``: list the candidate cuts of a model, input to output.

The JSON form (``--json``) is the contract other tools read::

    {"model": "resnet.onnx", "sha256": "...",
     "cuts": [{"id": "x", "tensors": [{"name": "x", "dtype": "float32", "shape": ["N", 3, 224, 224]}],
               "bytes": 602112, "head_nodes": 0, "total_nodes": 120, "head_flops": 0, ...}, ...]}

``bytes`` is per sample: symbolic dimensions (the batch) count as 1.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


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
    from splitinf.offline.graph import enumerate_cuts, load_model

    model = load_model(args.model)
    cuts = enumerate_cuts(model)
    if args.json:
        print(json.dumps({"model": args.model, "sha256": sha256_file(args.model), "cuts": [c.to_json() for c in cuts]}))
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
    print(f"{len(cuts)} cuts of {args.model}; split one with `splitinf split {args.model} --cut ID -o OUTDIR --verify`")
    return 0
