"""An MLServer inference runtime that runs an ONNX model with onnxruntime (Seldon ships none for ONNX).

Runs inside MLServer's own environment (see ``setup_envs``) and imports nothing of splitinf: the
launcher puts this folder on MLServer's ``PYTHONPATH`` and names ``mlserver_runtime.OnnxRuntime`` as
the implementation in each ``model-settings.json``. The model's metadata (names, datatypes, shapes)
comes from the ONNX file, as a user's runtime would report it.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from mlserver.utils import get_model_uri
from ort_metadata import tensor_metadata


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self.settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self.inputs = [MetadataTensor(**t) for t in tensor_metadata(self._session.get_inputs())]
        self.outputs = [MetadataTensor(**t) for t in tensor_metadata(self._session.get_outputs())]
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
