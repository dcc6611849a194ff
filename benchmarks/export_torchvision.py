"""Export a torchvision model with random weights to ONNX: a model the project did not build or tune.

Run (torch is not a dependency of splitinf; use a venv of its own):

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1 onnx onnxscript
    /tmp/tv/bin/python benchmarks/export_torchvision.py efficientnet_b0 -o effb0.onnx
    splitinf bench --model effb0.onnx --bandwidths 1,10,100 --rtts 5,50 ...

The weights are torchvision's random initialisation (``weights=None``, seeded): nothing is
downloaded. The exporter is torch's default (``torch.export``-based since 2.9; ``--legacy`` for the
TorchScript one), so the file is what a user of that release gets, weights in an external
``.onnx.data`` file included. Input ``image`` [1, 3, SIZE, SIZE], output ``logits``.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a torchvision.models builder, e.g. efficientnet_b0, mobilenet_v3_small")
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--legacy", action="store_true", help="the TorchScript-based exporter")
    args = parser.parse_args(argv)
    try:
        import torch
        import torchvision
    except ImportError:
        print("export_torchvision: needs torch and torchvision (see the module docstring)", file=sys.stderr)
        return 2
    builder = getattr(torchvision.models, args.model, None)
    if builder is None:
        print(f"export_torchvision: torchvision.models has no {args.model!r}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    model = builder(weights=None).eval()
    example = torch.randn(1, 3, args.size, args.size)
    torch.onnx.export(
        model,
        (example,),
        args.output,
        input_names=["image"],
        output_names=["logits"],
        opset_version=args.opset,
        dynamo=not args.legacy,
    )
    print(f"{args.output}: torchvision {torchvision.__version__} {args.model}, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
