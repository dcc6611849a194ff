"""The one place splitinf builds onnxruntime sessions and their options.

The device runtime, the tail server, the profiler and the verifier all open sessions here, so
a profile is timed with exactly the settings the side that runs the part will use: a
:class:`SessionSettings` names them, and ``session_options`` turns it into onnxruntime's options.
A model held as a chain of files (segments, then a codec graph) runs as one :class:`Chain` of
sessions, on the device and wherever the offline tools run what the device will.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from splitinf.errors import ConfigError, ModelLoadError, PlanError

__all__ = [
    "SERVING_SETTINGS",
    "Chain",
    "DEFAULT_PROVIDERS",
    "GRAPH_OPTIMIZATIONS",
    "SessionSettings",
    "check_providers",
    "numpy_dtype_name",
    "open_session",
    "quiet_run_options",
    "session_options",
]

DEFAULT_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)

GraphOptimization = Literal["disable", "basic", "extended", "all"]
GRAPH_OPTIMIZATIONS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class SessionSettings:
    """How a session runs: threads (0 is onnxruntime's default), graph optimization, spinning, providers.

    ``spinning`` False keeps idle pool threads off the cores: on a small machine spinning takes the
    cores gRPC needs to move the next request's bytes, so the server and the device run without it.
    ``memory_arena`` False turns onnxruntime's CPU arena off: the arena keeps the largest run's
    memory for good (one 66 MB request left a server at 2.6 GB RSS), so the server, which runs
    requests of any size, frees each run's memory instead. That costs time: every run maps and
    faults in its buffers again (EfficientNet-B0's tail served in 23 ms against 15.5 ms with the
    arena, a third of it kernel time). onnxruntime's arena shrinkage run option did not give the
    memory back either, which is why the server keeps the arena off by default.
    """

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: GraphOptimization = "all"
    spinning: bool = False
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    memory_arena: bool = True

    def with_threads(self, threads: int | None) -> SessionSettings:
        """The same settings with ``threads`` intra-op threads and one inter-op thread (None or 0: default)."""
        if not threads:
            return self
        return replace(self, intra_op_threads=threads, inter_op_threads=1)


SERVING_SETTINGS = SessionSettings(memory_arena=False)
"""What ``splitinf serve`` opens tails with unless its config says otherwise; a server-role profile
times the tails with the same settings, so the profile describes the server as it runs."""


def session_options(settings: SessionSettings | None = None) -> ort.SessionOptions:
    settings = settings or SessionSettings()
    if settings.graph_optimization not in GRAPH_OPTIMIZATIONS:
        raise ConfigError(
            f"graph_optimization {settings.graph_optimization!r} is not one of {sorted(GRAPH_OPTIMIZATIONS)}"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = GRAPH_OPTIMIZATIONS[settings.graph_optimization]
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = settings.memory_arena
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    spin = "1" if settings.spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return options


def check_providers(providers: Sequence[str]) -> tuple[str, ...]:
    available = set(ort.get_available_providers())
    missing = [p for p in providers if p not in available]
    if missing:
        raise ConfigError(f"onnxruntime providers {missing} are not available here; available: {sorted(available)}")
    return tuple(providers)


def open_session(
    source: bytes | str | os.PathLike[str], settings: SessionSettings | None = None
) -> ort.InferenceSession:
    """A session for a serialized model or a model file (a file's external data resolves beside it)."""
    settings = settings or SessionSettings()
    data = str(source) if isinstance(source, (str, os.PathLike)) else source
    try:
        return ort.InferenceSession(data, session_options(settings), providers=list(settings.providers))
    except Exception as exc:  # onnxruntime raises its own pybind classes; name the file and the cause
        where = Path(data) if isinstance(data, str) else "the model"
        raise ModelLoadError(f"onnxruntime cannot load {where}: {str(exc).strip().splitlines()[-1]}") from exc


def quiet_run_options() -> ort.RunOptions:
    """Run options without onnxruntime's own error log lines, for a run whose failure the caller reports once."""
    options = ort.RunOptions()
    options.log_severity_level = 4
    return options


# onnxruntime's names of tensor element types (``NodeArg.type``), as numpy dtype names.
_NUMPY_OF_ORT_TYPE = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


def numpy_dtype_name(ort_type: str) -> str | None:
    """The numpy dtype name of an onnxruntime tensor type (``"tensor(float)"`` is ``"float32"``), or None
    for one splitinf does not carry (strings, sequences, maps)."""
    return _NUMPY_OF_ORT_TYPE.get(ort_type)


class Chain:
    """Sessions run in order; each takes its inputs by name from the feeds and the earlier outputs."""

    def __init__(self, label: str, sessions: Sequence[Any], files: Sequence[str] = ()) -> None:
        self.label = label
        self.sessions = tuple(sessions)
        self.files = tuple(files) or tuple(f"file {i + 1}" for i in range(len(self.sessions)))
        self._inputs = [[i.name for i in s.get_inputs()] for s in self.sessions]
        self._outputs = [[o.name for o in s.get_outputs()] for s in self.sessions]

    @property
    def output_names(self) -> list[str]:
        """Every tensor the chain makes, in order (the last file's outputs last)."""
        return [name for names in self._outputs for name in names]

    def check(self, feeds: Iterable[str], wanted: Iterable[str]) -> None:
        """PlanError unless, given tensors named ``feeds``, every file's inputs and every ``wanted`` name are there."""
        available = set(feeds)
        for file, inputs, outputs in zip(self.files, self._inputs, self._outputs, strict=True):
            missing = [n for n in inputs if n not in available]
            if missing:
                raise PlanError(
                    f"option {self.label!r}: {file} takes {missing}, which neither the plan's inputs nor the "
                    "files before it make; re-run `splitinf plan`"
                )
            available.update(outputs)
        missing = [n for n in wanted if n not in available]
        if missing:
            raise PlanError(f"option {self.label!r}: its files never make {missing}; re-run `splitinf plan`")

    def run(self, feeds: Mapping[str, np.ndarray], run_options: Any = None) -> dict[str, np.ndarray]:
        """The feeds and every tensor the files make, by name (``run_options``: onnxruntime's RunOptions)."""
        values = dict(feeds)
        for session, inputs, outputs in zip(self.sessions, self._inputs, self._outputs, strict=True):
            produced = session.run(outputs, {n: values[n] for n in inputs}, run_options)
            values.update(zip(outputs, produced, strict=True))
        return values
