"""splitinf: edge-cloud split inference with ONNX, the Open Inference Protocol and a local fallback."""

__version__ = "0.1.0"
