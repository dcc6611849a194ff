"""``splitinf split MODEL.onnx --cut ID -o OUTDIR [--verify] [--samples PATH] [--shape NAME=DIMS ...]
[--repo REPO --name NAME]``.

Writes ``OUTDIR/head.onnx``, ``OUTDIR/tail.onnx`` and ``OUTDIR/manifest.json`` atomically.
``--cut`` takes a cut id from ``splitinf cuts`` or comma-separated tensor names.
``--verify`` compares head -> tail with the full model in onnxruntime on ``--samples`` when given
(an .npz keyed by input name, or a directory of INPUT.npy / .npz files, with samples along each
array's first axis; see :mod:`splitinf.contract.samples`), else on random inputs at ``--shape``.
Inputs the model cannot run on are a one-line error (exit 2) naming their shapes.
``--repo REPO --name NAME`` also writes the tail as ``REPO/NAME/1/model.onnx`` with the manifest beside it.
"""

from __future__ import annotations

import argparse
from typing import Any

from splitinf.cli.options import add_input_options, input_shapes
from splitinf.errors import UsageError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "split",
        help="cut a model into head.onnx and tail.onnx with a manifest",
        description="Cut MODEL at a cut from `splitinf cuts` and write head.onnx, tail.onnx and manifest.json.",
    )
    parser.add_argument("model", metavar="MODEL.onnx", help="the ONNX model (external data is read from beside it)")
    parser.add_argument("--cut", required=True, metavar="ID", help="a cut id from `splitinf cuts`, or tensor names a,b")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="directory to write (replaced whole)")
    parser.add_argument("--verify", action="store_true", help="check head -> tail against the full model (onnxruntime)")
    add_input_options(parser, "real inputs to verify on, instead of random ones (implies --verify)")
    parser.add_argument("--repo", metavar="REPO", help="also write the tail into this model repository (Triton layout)")
    parser.add_argument("--name", metavar="NAME", help="the tail's model name in --repo")
    parser.add_argument("--version", default="1", metavar="V", help="the tail's version in --repo (default 1)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if (args.repo is None) != (args.name is None):
        raise UsageError("--repo and --name go together: give both to write the tail into a model repository")
    import onnx

    from splitinf.offline.partition import export_partition, write_to_repository

    manifest = export_partition(
        args.model, args.cut, args.output, verify=args.verify, samples=args.samples, shapes=input_shapes(args)
    )
    cut = manifest["cut"]
    names = ", ".join(t["name"] for t in cut["tensors"])
    print(f"cut {cut['id']}: {names} ({cut['bytes']} bytes/sample)")
    print(f"wrote {args.output}/head.onnx, tail.onnx, manifest.json")
    if "verify" in manifest:
        report = manifest["verify"]
        print(
            f"verified on {report['samples']} input sets: max abs error {report['max_abs_error']:.3g}, "
            f"max rel error {report['max_rel_error']:.3g}"
        )
    if args.repo is not None:
        tail = onnx.load_model(f"{args.output}/tail.onnx")
        path = write_to_repository(tail, args.repo, args.name, args.version, manifest=manifest)
        print(f"wrote {path} (+ manifest.json)")
    return 0
