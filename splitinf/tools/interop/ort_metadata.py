"""Tensor metadata of an onnxruntime session in V2 terms, for the server programs in this folder.

Imported as a top-level module (``ort_metadata``) by ``mlserver_runtime`` and ``kserve_server``,
which run in the servers' own environments with this folder on their path; it needs onnxruntime only.
"""

from __future__ import annotations

from typing import Any

# onnxruntime's type strings -> V2 datatypes
DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(bool)": "BOOL",
}


def tensor_metadata(args: Any) -> list[dict[str, Any]]:
    """``session.get_inputs()`` or ``get_outputs()`` as V2 metadata: name, datatype, shape (-1: any size)."""
    return [
        {
            "name": arg.name,
            "datatype": DATATYPES[arg.type],
            "shape": [d if isinstance(d, int) else -1 for d in arg.shape],
        }
        for arg in args
    ]
