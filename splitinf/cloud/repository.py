"""A model repository in Triton's layout, loaded into onnxruntime sessions.

::

    REPO/
      MODEL/
        config.pbtxt          optional; splitinf reads max_batch_size and dynamic_batching
        1/
          model.onnx
          model.onnx.data     optional external data (tails over 2 GiB); only files in this folder
          manifest.json       from `splitinf split`: the sha256 of model.onnx and of its data files;
                              required unless the server runs with allow_unsigned

Nothing outside the repository is opened: see ``splitinf.cloud.model_files``.

The same folder can be served by NVIDIA Triton (``cloud/TRITON.md``). ``config.pbtxt`` is
parsed by ``cloud/model_config.py`` with protobuf's text_format, strictly, as Triton does.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitinf.cloud.model_config import CONFIG_FILE, complete_model_config, serving_config
from splitinf.cloud.model_config import read_model_config as read_config_pbtxt
from splitinf.cloud.model_files import check_model_files
from splitinf.contract.files import resolves_inside
from splitinf.contract.tensors import TensorSpec, check_tensors
from splitinf.errors import ConfigError, InvalidRequestError, ModelExecutionError, ModelLoadError
from splitinf.ort import (
    SERVING_SETTINGS,
    SessionSettings,
    check_providers,
    numpy_dtype_name,
    open_session,
    quiet_run_options,
    session_options,
)
from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import model_config_pb2 as mc
from splitinf.protocol.tensors import DATATYPE_TO_NUMPY, decode_request_inputs, encode_request

__all__ = [
    "LoadedModel",
    "load_repository",
    "scan_repository",
]

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
# Timed runs after the untimed warm-up one: the run time known before the first request (a median of 3).
WARM_UP_TIMED_RUNS = 3

# --- models -----------------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class LoadedModel:
    """One version of one model, ready to run."""

    name: str
    version: str
    path: Path
    sha256: str
    session: Any  # onnxruntime.InferenceSession
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0  # > 0: dynamic batching across requests
    batch_delay_s: float = 0.0
    # config.pbtxt completed from the model as Triton does (what the ModelConfig call answers).
    config: mc.ModelConfig = field(default_factory=mc.ModelConfig)
    # The most samples (first dimension) and tensor bytes one request may carry; None: no limit.
    request_batch_limit: int | None = None
    request_bytes_limit: int | None = None
    warm_up_seconds: tuple[float, ...] = ()  # timed runs at load (see warm_up)
    _output_names: tuple[str, ...] = field(default=(), repr=False)
    _has_batch_dimension: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self._output_names = tuple(spec.name for spec in self.outputs)
        self._has_batch_dimension = all(
            spec.shape and not isinstance(spec.shape[0], int) for spec in self.inputs + self.outputs
        )

    @property
    def has_batch_dimension(self) -> bool:
        return self._has_batch_dimension

    def fixed_batch(self) -> int | None:
        """The first dimension every input fixes, when they all fix the same one."""
        firsts = {spec.shape[0] if spec.shape else None for spec in self.inputs}
        first = firsts.pop() if len(firsts) == 1 else None
        return first if isinstance(first, int) and first > 0 else None

    def check_request_size(self, tensors: Sequence[tuple[str, str, Sequence[int]]]) -> None:
        """Refuse a request over the model's batch or bytes limit from its (name, datatype, shape)
        metadata alone, before any tensor is decoded. What is malformed is left to decoding."""
        total = 0
        for name, datatype, shape in tensors:
            if not shape or min(shape) < 0 or datatype not in DATATYPE_TO_NUMPY:
                continue
            if self.request_batch_limit is not None and shape[0] > self.request_batch_limit:
                raise InvalidRequestError(
                    f"model {self.name!r}: batch {shape[0]} of tensor {name[:64]!r} exceeds max_batch_size "
                    f"{self.request_batch_limit} (config.pbtxt, or the model's fixed batch); split the request"
                )
            total += math.prod(shape) * DATATYPE_TO_NUMPY[datatype].itemsize
        if self.request_bytes_limit is not None and total > self.request_bytes_limit:
            raise InvalidRequestError(
                f"model {self.name!r}: the request's tensors are {total} bytes, over the limit of "
                f"{self.request_bytes_limit} (max_request_bytes); split the request"
            )

    def validate(self, inputs: Mapping[str, np.ndarray], requested: Sequence[str]) -> int:
        """Check names, dtypes and shapes; returns the batch size (first dim) when batching, else 1."""
        check_tensors(self.inputs, inputs, InvalidRequestError, what="input", context=f"model {self.name!r}: ")
        if requested:
            self._check_requested(requested)
        if self.max_batch_size <= 0:
            return 1
        return self._batch_of(inputs)

    def _check_requested(self, requested: Sequence[str]) -> None:
        unknown_outputs = sorted(set(requested) - set(self._output_names))
        if unknown_outputs:
            raise InvalidRequestError(
                f"model {self.name!r}: unknown output(s) {unknown_outputs}; the model's outputs are "
                f"{list(self._output_names)}"
            )

    def _batch_of(self, inputs: Mapping[str, np.ndarray]) -> int:
        batches = {inputs[spec.name].shape[0] for spec in self.inputs}
        if len(batches) != 1:
            raise InvalidRequestError(
                f"model {self.name!r}: inputs disagree on the batch (first) dimension: {sorted(batches)}"
            )
        return int(batches.pop())  # within max_batch_size: check_request_size saw to it before decoding

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One onnxruntime execution; onnxruntime failures become ModelExecutionError (INTERNAL)."""
        try:
            values = self.session.run(list(self._output_names), dict(inputs))
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidArgument ...)
            raise ModelExecutionError(f"model {self.name!r} failed in onnxruntime: {exc}") from exc
        return dict(zip(self._output_names, values, strict=True))

    def warm_up(self) -> None:
        """Run once on zeros (symbolic dimensions as 1) so the first real request is not slow, then
        ``WARM_UP_TIMED_RUNS`` timed runs with the serving session: ``warm_up_seconds``, the run time
        the server knows before its first request.

        The zeros take the wire's path (protobuf bytes -> numpy views over them), not just
        ``np.zeros``: warming only onnxruntime left every later call on a 0.8 MB tensor
        about twice as slow (benchmarks/bench_server.py). A model that refuses zeros (silero-vad's
        tails) is served all the same: one warning, and its first request warms it up.
        """
        sample = {spec.name: spec.zeros() for spec in self.inputs}
        request = encode_request(pb.ModelInferRequest(model_name=self.name), sample)
        inputs = decode_request_inputs(pb.ModelInferRequest.FromString(request.SerializeToString()))
        try:
            self.session.run(list(self._output_names), dict(inputs), quiet_run_options())
        except Exception as exc:  # onnxruntime's own error types: the model, not the repository, refuses zeros
            reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            log.warning("%s version %s does not run on zeros (%s); its first request warms it up", self.name,
                        self.version, reason)  # fmt: skip
            return
        timed = []
        for _ in range(WARM_UP_TIMED_RUNS):
            started = time.perf_counter()
            self.run(inputs)
            timed.append(time.perf_counter() - started)
        self.warm_up_seconds = tuple(timed)


def _tensor_specs(args: Sequence[Any], path: Path) -> tuple[TensorSpec, ...]:
    specs = []
    for arg in args:
        dtype = numpy_dtype_name(arg.type)
        if dtype is None:
            raise ModelLoadError(f"{path}: tensor {arg.name!r} has type {arg.type}, which splitinf cannot serve")
        specs.append(TensorSpec(arg.name, dtype, tuple(arg.shape)))
    return tuple(specs)


def _versions(model_dir: Path) -> dict[str, Path]:
    """``{version: model.onnx}`` of one model folder; two folders naming one version ("1", "01") are refused."""
    versions: dict[str, Path] = {}
    numbers: dict[int, str] = {}
    for folder in sorted(model_dir.iterdir()):
        if not (folder.is_dir() and folder.name.isdigit() and (folder / MODEL_FILE).is_file()):
            continue
        clash = numbers.setdefault(int(folder.name), folder.name)
        if clash != folder.name:
            raise ConfigError(
                f"{model_dir}: version folders {clash!r} and {folder.name!r} are the same version "
                f"{int(folder.name)}; keep one (without leading zeros)"
            )
        versions[folder.name] = folder / MODEL_FILE
    return dict(sorted(versions.items(), key=lambda item: int(item[0])))


def scan_repository(repo: Path) -> dict[str, dict[str, Path]]:
    """``{model: {version: model.onnx path}}`` for every numeric version folder holding a model.onnx."""
    if not repo.is_dir():
        raise ConfigError(f"model repository {repo} is not a directory")
    repo_root = repo.resolve()
    found: dict[str, dict[str, Path]] = {}
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not resolves_inside(model_dir, repo_root):
            raise ConfigError(
                f"refusing to serve {model_dir}: it is a symlink to {model_dir.resolve()}, outside the repository "
                f"{repo_root}; copy the model into the repository instead"
            )
        versions = _versions(model_dir)
        if versions:
            found[model_dir.name] = versions
        else:
            log.warning("skipping %s: no VERSION/%s inside", model_dir, MODEL_FILE)
    if not found:
        raise ConfigError(f"model repository {repo} holds no models; expected {repo}/MODEL/1/{MODEL_FILE}")
    return found


def load_repository(
    repo: Path,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    graph_optimization: str = "all",
    max_batch_size: int | None = None,
    batch_delay_ms: float | None = None,
    warmup: bool = True,
    allow_unsigned: bool = False,
    max_request_bytes: int | None = None,
    memory_arena: bool = SERVING_SETTINGS.memory_arena,
) -> dict[str, dict[str, LoadedModel]]:
    """Load, check and warm up every model version; ``max_batch_size``/``batch_delay_ms`` override config.pbtxt.

    Each model's requests are limited to its config.pbtxt max_batch_size (else its dynamic batch,
    else its fixed first dimension) and to ``max_request_bytes``. Sessions run without onnxruntime's
    CPU arena unless ``memory_arena``: one large request must not keep its memory.

    Each version's files are checked first (``check_model_files``: inside the repository, external
    data in the version folder, sha256 as the manifest says unless ``allow_unsigned``); onnxruntime
    then opens ``model.onnx`` by path, so its external data resolves in the version folder.
    """
    settings = SessionSettings(
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
        graph_optimization=graph_optimization,  # type: ignore[arg-type]
        providers=check_providers(providers),
        memory_arena=memory_arena,
    )
    session_options(settings)  # a bad optimization level is a ConfigError before any model loads
    models: dict[str, dict[str, LoadedModel]] = {}
    repo_root = repo.resolve()
    for name, versions in scan_repository(repo).items():
        declared = read_config_pbtxt(repo / name)
        config = serving_config(declared)
        batch = config.max_batch_size if config.dynamic_batching else 0
        delay_s = config.max_queue_delay_s
        if max_batch_size is not None:
            batch = max_batch_size
        if batch_delay_ms is not None:
            delay_s = batch_delay_ms / 1000
        models[name] = {}
        for version, path in versions.items():
            files = check_model_files(path, repo_root, allow_unsigned=allow_unsigned)
            digest = files.sha256
            started = time.perf_counter()
            session = open_session(path, settings)
            model = LoadedModel(
                name=name,
                version=version,
                path=path,
                sha256=digest,
                session=session,
                inputs=_tensor_specs(session.get_inputs(), path),
                outputs=_tensor_specs(session.get_outputs(), path),
            )
            if batch > 0:
                if model.has_batch_dimension:
                    model.max_batch_size, model.batch_delay_s = batch, delay_s
                elif max_batch_size is None:
                    raise ConfigError(
                        f"{repo / name / CONFIG_FILE}: dynamic batching needs a variable first (batch) "
                        f"dimension on every input and output of {path}"
                    )
            # Checks config.pbtxt's tensors against the model (ConfigError on a mismatch), as Triton does at load.
            model.config = complete_model_config(
                declared, name, model.inputs, model.outputs,
                max_batch_size=model.max_batch_size, max_queue_delay_s=model.batch_delay_s,
            )  # fmt: skip
            model.request_batch_limit = config.max_batch_size or model.max_batch_size or model.fixed_batch()
            model.request_bytes_limit = max_request_bytes
            if warmup:
                model.warm_up()
            log.info(
                "loaded %s version %s (%s, batch %d) in %.2fs",
                name, version, digest[:12], model.max_batch_size, time.perf_counter() - started,
            )  # fmt: skip
            models[name][version] = model
    return models
