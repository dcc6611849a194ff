"""The tail server: the Open Inference Protocol (KServe V2) over gRPC, onnxruntime behind it.

From the process inward: ``app`` (``create_server``, the running ``TailServer``), ``servicer``
(protobuf <-> plain data), ``errors`` (failures -> gRPC status), ``dataplane`` (lookup, admission,
validation, execution, metrics), ``batching``; beside them ``repository`` (loading tails),
``config``, ``auth`` (TLS, token) and ``metrics``.
"""
