"""Triton's model configuration: ``config.pbtxt`` read, completed from the model, and written.

``config.pbtxt`` is protobuf text format of Triton's ``ModelConfig``; it is parsed with
protobuf's own ``text_format`` against the subset of Triton's ``model_config.proto`` in
``protos/model_config.proto`` (same names and field numbers). As in Triton, a field that
message does not have is an error naming the field, and so is a wrong type or a value out
of range; every error is one line that says where (``path:line:column``).

- :func:`parse_model_config` / :func:`read_model_config`: text or a model folder -> ``ModelConfig``
- :func:`serving_config`: the settings splitinf's server acts on (dynamic batching)
- :func:`complete_model_config`: fill in what the config leaves out from the ONNX model's
  inputs and outputs, the way Triton's onnxruntime backend autocompletes (the ModelConfig RPC)
- :func:`config_pbtxt`: a ``ModelConfig`` as Triton's config.pbtxt (``splitinf triton-config`` writes one per tail)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from splitinf.contract.tensors import TensorSpec
from splitinf.errors import ConfigError
from splitinf.protocol import model_config_pb2 as mc
from splitinf.protocol.tensors import datatype_of

__all__ = [
    "CONFIG_FILE",
    "PLATFORM",
    "ServingConfig",
    "complete_model_config",
    "config_pbtxt",
    "parse_model_config",
    "read_model_config",
    "serving_config",
]

CONFIG_FILE = "config.pbtxt"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
DEFAULT_MODEL_FILENAME = "model.onnx"
# Triton's configs are a few KB; a much larger file is a mistake (a model saved under the wrong name).
MAX_CONFIG_BYTES = 1 << 20
_MAX_MESSAGE = 240


@dataclass(frozen=True)
class ServingConfig:
    """What splitinf's server takes from config.pbtxt."""

    max_batch_size: int = 0
    dynamic_batching: bool = False
    max_queue_delay_s: float = 0.0


def _one_line(error: text_format.ParseError, text: str) -> str:
    """protobuf's message without its echo of the whole offending line, which can be megabytes."""
    reason = " ".join(str(error).split())
    reason = "".join(c if c.isprintable() else repr(c)[1:-1] for c in reason)  # a NUL byte must not reach the log
    line, column = error.GetLine(), error.GetColumn()
    if line is not None and column is not None:
        reason = reason.removeprefix(f"{line}:{column} : ")
        if reason.startswith("'") and "': " in reason:
            reason = reason.rsplit("': ", 1)[1]
        reason = f"{line}:{column}: {reason}"
    return reason if len(reason) <= _MAX_MESSAGE else reason[: _MAX_MESSAGE - 3] + "..."


def parse_model_config(text: str, source: str = CONFIG_FILE) -> mc.ModelConfig:
    """Protobuf text format -> ``ModelConfig``; ``ConfigError`` (one line, naming ``source``) when malformed."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(
            f"{source}:{_one_line(exc, text)} (splitinf reads the fields of Triton's model_config.proto "
            "listed in protos/model_config.proto)"
        ) from None
    _check_values(config, source)
    return config


def _check_values(config: mc.ModelConfig, source: str) -> None:
    if config.max_batch_size < 0:
        raise ConfigError(f"{source}: max_batch_size must be 0 (no batching) or more, got {config.max_batch_size}")
    if config.platform not in ("", PLATFORM) or config.backend not in ("", BACKEND):
        found = config.platform or config.backend
        raise ConfigError(f"{source}: splitinf serves ONNX models only (platform {PLATFORM!r}), not {found!r}")
    for tensor in [*config.input, *config.output]:
        bad = [d for d in tensor.dims if d < -1 or d == 0]
        if bad:
            raise ConfigError(f"{source}: tensor {tensor.name!r} has dims {list(tensor.dims)}; use sizes > 0 or -1")


def read_model_config(model_dir: Path) -> mc.ModelConfig | None:
    """``MODEL/config.pbtxt`` parsed, or None when the model folder has none."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return None
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {size} bytes is not a model configuration (at most {MAX_CONFIG_BYTES})")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); config.pbtxt is protobuf text format") from None
    return parse_model_config(text, str(path))


def serving_config(config: mc.ModelConfig | None) -> ServingConfig:
    if config is None:
        return ServingConfig()
    batching = config.WhichOneof("scheduling_choice") == "dynamic_batching"
    return ServingConfig(
        max_batch_size=config.max_batch_size,
        dynamic_batching=batching,
        max_queue_delay_s=config.dynamic_batching.max_queue_delay_microseconds / 1e6,
    )


def _data_type(spec: TensorSpec) -> int:
    return mc.DataType.Value("TYPE_" + datatype_of(spec.dtype))


def _dims(spec: TensorSpec, batched: bool) -> list[int]:
    shape = spec.shape[1:] if batched else spec.shape
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


def _check_declared(
    declared: Sequence[Any],  # ModelInput or ModelOutput
    specs: Sequence[TensorSpec],
    kind: str,
    batched: bool,
    model: str,
) -> None:
    """Triton refuses a config whose tensors the model does not have or has with another type or shape."""
    by_name = {spec.name: spec for spec in specs}
    for tensor in declared:
        spec = by_name.get(tensor.name)
        if spec is None:
            raise ConfigError(
                f"model {model!r}: config.pbtxt declares {kind} {tensor.name!r}, the model's {kind}s are "
                f"{sorted(by_name)}"
            )
        expected_type, expected_dims = _data_type(spec), _dims(spec, batched)
        if tensor.data_type not in (mc.TYPE_INVALID, expected_type):
            raise ConfigError(
                f"model {model!r}: config.pbtxt gives {kind} {tensor.name!r} data_type "
                f"{mc.DataType.Name(tensor.data_type)}, the model has {mc.DataType.Name(expected_type)}"
            )
        if tensor.dims and not _dims_match(list(tensor.dims), expected_dims):
            raise ConfigError(
                f"model {model!r}: config.pbtxt gives {kind} {tensor.name!r} dims {list(tensor.dims)}, the model "
                f"has {expected_dims}" + (" (without the batch dimension)" if batched else "")
            )


def _dims_match(declared: list[int], model: list[int]) -> bool:
    return len(declared) == len(model) and all(m == -1 or d == m for d, m in zip(declared, model, strict=True))


def complete_model_config(
    config: mc.ModelConfig | None,
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch_size: int | None = None,
    max_queue_delay_s: float | None = None,
) -> mc.ModelConfig:
    """``config`` (or an empty one) completed from the model, as Triton's onnxruntime backend does.

    Name, platform, backend and default file are filled in; inputs and outputs the config
    leaves out are added from the model (data type, dims without the batch dimension when
    ``max_batch_size > 0``, -1 for a variable size), and the ones it lists are checked
    against the model (``ConfigError`` on a mismatch). ``max_batch_size`` /
    ``max_queue_delay_s`` are what the server actually does (server.toml may override the
    file); ``max_batch_size > 0`` turns dynamic batching on, as splitinf serves it.
    """
    completed = mc.ModelConfig()
    if config is not None:
        completed.CopyFrom(config)
    if completed.name and completed.name != name:
        raise ConfigError(f"model {name!r}: config.pbtxt names it {completed.name!r}; the folder's name is the model's")
    completed.name = name
    completed.platform, completed.backend = PLATFORM, BACKEND
    completed.default_model_filename = completed.default_model_filename or DEFAULT_MODEL_FILENAME
    if max_batch_size is not None:
        completed.max_batch_size = max_batch_size
    batched = completed.max_batch_size > 0
    if batched and not all(spec.shape and not isinstance(spec.shape[0], int) for spec in [*inputs, *outputs]):
        raise ConfigError(
            f"model {name!r}: max_batch_size {completed.max_batch_size} needs a variable first (batch) dimension "
            "on every input and output"
        )
    _check_declared(completed.input, inputs, "input", batched, name)
    _check_declared(completed.output, outputs, "output", batched, name)
    _add_missing(completed.input, inputs, batched)
    _add_missing(completed.output, outputs, batched)
    if batched:
        delay_us = completed.dynamic_batching.max_queue_delay_microseconds
        if max_queue_delay_s is not None:
            delay_us = round(max_queue_delay_s * 1e6)
        completed.dynamic_batching.max_queue_delay_microseconds = delay_us
    else:
        completed.ClearField("dynamic_batching")
    if not completed.instance_group:
        completed.instance_group.add(name=name, count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    return completed


def _add_missing(declared: Any, specs: Sequence[TensorSpec], batched: bool) -> None:
    """Append the model's tensors the config leaves out; fill data_type/dims the config leaves empty."""
    present = {tensor.name: tensor for tensor in declared}
    for spec in specs:
        tensor = present.get(spec.name)
        if tensor is None:
            tensor = declared.add(name=spec.name)
        if tensor.data_type == mc.TYPE_INVALID:
            tensor.data_type = _data_type(spec)
        if not tensor.dims:
            tensor.dims.extend(_dims(spec, batched))


def config_pbtxt(config: mc.ModelConfig) -> str:
    """``config`` in protobuf text format, as Triton reads config.pbtxt."""
    return text_format.MessageToString(config)
