"""splitinf: edge-cloud split inference with ONNX, the Open Inference Protocol and a local fallback."""

import os

# onnxruntime 1.31 starts a telemetry session on import (it leaves a `.ses` file in the temp
# directory). A device framework keeps that off unless the user sets the variable themselves.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.2.0"
