"""KServe's ModelServer serving every ``NAME/VERSION/model.onnx`` of a V2 model repository with onnxruntime.

    python kserve_server.py REPOSITORY --grpc-port P --http-port Q

Runs inside KServe's own environment (see ``setup_envs``) and imports nothing of splitinf. Each model
is a ``kserve.Model`` subclass, as a KServe user writes a custom predictor; its metadata (names,
datatypes, shapes) comes from the ONNX file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(bool)": "BOOL",
}


def _metadata(args: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": arg.name,
            "datatype": _DATATYPES[arg.type],
            "shape": [d if isinstance(d, int) else -1 for d in arg.shape],
        }
        for arg in args
    ]


class OnnxModel(Model):
    def __init__(self, name: str, path: Path):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self._session.get_outputs()]
        self.ready = True
        return True

    def get_input_types(self) -> list[dict[str, Any]]:
        return _metadata(self._session.get_inputs())

    def get_output_types(self) -> list[dict[str, Any]]:
        return _metadata(self._session.get_outputs())

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        feeds = {item.name: item.as_numpy() for item in payload.inputs}
        results = self._session.run(self._output_names, feeds)
        outputs = []
        for name, value in zip(self._output_names, results, strict=True):
            array = np.asarray(value)
            output = InferOutput(name=name, shape=list(array.shape), datatype=_DATATYPES[_ort_type(array)])
            output.set_data_from_numpy(array, binary_data=True)
            outputs.append(output)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)


def _ort_type(array: np.ndarray) -> str:
    names = {"float32": "float", "float16": "float16", "float64": "double", "bool": "bool"}
    return f"tensor({names.get(array.dtype.name, array.dtype.name)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="KServe ModelServer over a V2 model repository of ONNX files")
    parser.add_argument("repository", type=Path)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args(argv)
    models = [OnnxModel(path.parent.parent.name, path) for path in sorted(args.repository.glob("*/*/model.onnx"))]
    if not models:
        print(f"{args.repository} holds no NAME/VERSION/model.onnx", file=sys.stderr)
        return 2
    ModelServer(grpc_port=args.grpc_port, http_port=args.http_port, workers=1).start(models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
