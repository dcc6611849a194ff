"""onnxruntime sessions on models held in memory, for the offline tools (codecs, profiling, planner).

A thin layer over :func:`splitinf.ort.open_session`, the one place sessions and their options are
built: it adds what needs ``onnx`` (a ``ModelProto``), which ``splitinf.ort`` must not import.
"""

from __future__ import annotations

import onnx
import onnxruntime as ort

from splitinf.ort import SessionSettings, open_session

__all__ = ["make_session"]


def make_session(
    model: onnx.ModelProto | bytes | str, threads: int | None = None, settings: SessionSettings | None = None
) -> ort.InferenceSession:
    """A session with ``settings`` (default: splitinf's, the device runtime's) and ``threads`` intra-op threads
    (None or 0: onnxruntime's default): the session the device runtime opens for a head with
    ``intra_op_threads = threads``, or with :data:`splitinf.ort.SERVING_SETTINGS` the server's for a tail."""
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return open_session(data, (settings or SessionSettings()).with_threads(threads))
