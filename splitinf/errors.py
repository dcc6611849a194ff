"""splitinf's errors: one hierarchy for the library, the CLI, the server and the device.

::

    SplitinfError
    ├── UsageError                 the caller's input is wrong; the CLI prints it and exits 2
    │   ├── ModelLoadError         missing file, not ONNX, corrupt protobuf, fails onnx.checker
    │   ├── CutError               unknown cut id, tensors that do not separate the graph
    │   ├── PlanError              bad plan/profile: wrong model sha256, missing cuts, mismatched fallback
    │   ├── ConfigError            bad TOML config or option value
    │   └── InputError             an inference input of the wrong name, dtype or shape
    ├── OutputError                an output path that cannot be written (the CLI exits 2 too)
    ├── VerificationError          head -> tail differs from the full model beyond tolerance
    ├── IntegrityError             a model part whose sha256 does not match its manifest
    ├── InferenceError             raised by the server core; each carries the gRPC status it maps to
    │   ├── ModelNotFoundError         NOT_FOUND
    │   ├── InvalidRequestError        INVALID_ARGUMENT
    │   ├── ServerBusyError            RESOURCE_EXHAUSTED
    │   ├── ServerUnavailableError     UNAVAILABLE (draining, not ready)
    │   ├── RequestDroppedError        DEADLINE_EXCEEDED (the caller's deadline passed or it left; not run)
    │   └── ModelExecutionError        INTERNAL (onnxruntime failed)
    └── TransportError             seen by the device's client; mapped from grpc.RpcError in one place
        ├── RemoteUnavailableError     connection refused/reset, server draining: nothing was answered
        ├── RemoteTimeoutError         the call's deadline passed
        ├── RemoteRejectedError        the server answered with an error status (bad request, not found ...)
        └── RemoteMismatchError        the server answered, but not what the plan expects
                                       (wrong tensors, a tail from another partition)

Status codes are names (``"NOT_FOUND"``), so this module needs no grpc: the server maps
``InferenceError.code`` to ``grpc.StatusCode`` in one place (``splitinf.cloud.errors``), and the device
client maps ``grpc.RpcError`` to ``TransportError`` (whose ``code`` is the status name) in
``splitinf.edge.client`` and nowhere else.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CutError",
    "InferenceError",
    "InputError",
    "IntegrityError",
    "InvalidRequestError",
    "ModelExecutionError",
    "ModelLoadError",
    "ModelNotFoundError",
    "OutputError",
    "PlanError",
    "RemoteMismatchError",
    "RemoteRejectedError",
    "RemoteTimeoutError",
    "RemoteUnavailableError",
    "RequestDroppedError",
    "ServerBusyError",
    "ServerUnavailableError",
    "SplitinfError",
    "TransportError",
    "UsageError",
    "VerificationError",
]


class SplitinfError(Exception):
    """Base of every error splitinf raises on purpose."""


class UsageError(SplitinfError):
    """The caller's input is wrong; the message names the problem and the fix."""


class ModelLoadError(UsageError):
    pass


class CutError(UsageError):
    pass


class PlanError(UsageError):
    pass


class ConfigError(UsageError):
    pass


class InputError(UsageError):
    pass


class OutputError(SplitinfError):
    pass


class VerificationError(SplitinfError):
    pass


class IntegrityError(SplitinfError):
    pass


class InferenceError(SplitinfError):
    """A request the server core refuses or fails; ``code`` is the gRPC status to answer with."""

    code: str = "INTERNAL"


class ModelNotFoundError(InferenceError):
    code = "NOT_FOUND"


class InvalidRequestError(InferenceError):
    code = "INVALID_ARGUMENT"


class ServerBusyError(InferenceError):
    code = "RESOURCE_EXHAUSTED"


class ServerUnavailableError(InferenceError):
    code = "UNAVAILABLE"


class RequestDroppedError(InferenceError):
    """Work the server dropped unrun; ``reason``: "deadline", "cancelled" or "too_late" (cannot finish in time)."""

    code = "DEADLINE_EXCEEDED"

    def __init__(self, message: str, reason: str = "deadline"):
        super().__init__(message)
        self.reason = reason


class ModelExecutionError(InferenceError):
    code = "INTERNAL"


class TransportError(SplitinfError):
    """A remote call did not give a usable answer; ``responded`` says whether any response arrived."""

    def __init__(self, message: str, *, code: str | None = None, responded: bool = False):
        super().__init__(message)
        self.code = code
        self.responded = responded


class RemoteUnavailableError(TransportError):
    pass


class RemoteTimeoutError(TransportError):
    pass


class RemoteRejectedError(TransportError):
    pass


class RemoteMismatchError(TransportError):
    pass
