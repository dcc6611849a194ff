"""An MLServer inference runtime that runs an ONNX model with onnxruntime (Seldon ships none for ONNX).

Runs inside MLServer's own environment (see ``setup_envs``) and imports nothing of splitinf: the
launcher puts this folder on MLServer's ``PYTHONPATH`` and names ``mlserver_runtime.OnnxRuntime`` as
the implementation in each ``model-settings.json``. The model's metadata (names, datatypes, shapes)
comes from the ONNX file, as a user's runtime would report it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from mlserver.utils import get_model_uri

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


def _metadata(args: Any) -> list[MetadataTensor]:
    return [
        MetadataTensor(
            name=arg.name,
            datatype=_DATATYPES[arg.type],
            shape=[d if isinstance(d, int) else -1 for d in arg.shape],
        )
        for arg in args
    ]


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self.settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self.inputs = _metadata(self._session.get_inputs())
        self.outputs = _metadata(self._session.get_outputs())
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        results = self._session.run(self._output_names, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(name, np.asarray(value))
                for name, value in zip(self._output_names, results, strict=True)
            ],
        )
