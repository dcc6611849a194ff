"""NVIDIA Triton (the tritonserver binary PyTriton ships) serving every ``NAME/VERSION/model.onnx`` of a
V2 model repository, each through a PyTriton-bound Python function that runs onnxruntime.

    python pytriton_server.py REPOSITORY --grpc-port P --http-port Q --metrics-port R [--workspace DIR]

Runs inside PyTriton's own environment (see ``setup_envs``) and imports nothing of splitinf. Batching
is off (the tails' shapes carry their batch dimension); the tensors' names, datatypes and shapes come
from the ONNX file, so Triton's ModelMetadata describes the tail as the plan does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def _tensors(args: Any) -> list[Tensor]:
    return [
        Tensor(name=a.name, dtype=_NUMPY[a.type], shape=tuple(d if isinstance(d, int) else -1 for d in a.shape))
        for a in args
    ]


def _infer_function(session: ort.InferenceSession) -> Any:
    names = [o.name for o in session.get_outputs()]

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        return [dict(zip(names, session.run(names, dict(request.items())), strict=True)) for request in requests]

    return infer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Triton (via PyTriton) over a V2 model repository of ONNX files")
    parser.add_argument("repository", type=Path)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--workspace", type=Path, help="PyTriton's working files (default: under ~/.cache/pytriton)")
    args = parser.parse_args(argv)
    paths = sorted(args.repository.glob("*/*/model.onnx"))
    if not paths:
        print(f"{args.repository} holds no NAME/VERSION/model.onnx", file=sys.stderr)
        return 2
    config = TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_address="127.0.0.1",
        http_port=args.http_port,
        metrics_port=args.metrics_port,
    )
    with Triton(config=config, workspace=args.workspace) as triton:
        for path in paths:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            triton.bind(
                model_name=path.parent.parent.name,
                model_version=int(path.parent.name),
                infer_func=_infer_function(session),
                inputs=_tensors(session.get_inputs()),
                outputs=_tensors(session.get_outputs()),
                config=ModelConfig(batching=False),
                strict=True,
            )
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
