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
from ort_metadata import tensor_metadata


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
        self._outputs = tensor_metadata(self._session.get_outputs())
        self.ready = True
        return True

    def get_input_types(self) -> list[dict[str, Any]]:
        return tensor_metadata(self._session.get_inputs())

    def get_output_types(self) -> list[dict[str, Any]]:
        return self._outputs

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        feeds = {item.name: item.as_numpy() for item in payload.inputs}
        results = self._session.run(self._output_names, feeds)
        outputs = []
        for spec, value in zip(self._outputs, results, strict=True):
            array = np.asarray(value)
            output = InferOutput(name=spec["name"], shape=list(array.shape), datatype=spec["datatype"])
            output.set_data_from_numpy(array, binary_data=True)
            outputs.append(output)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)


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
