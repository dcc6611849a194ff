"""The plan: the options a device holds and which one to use at a given network condition.

This module is the contract between the planner (``splitinf plan`` writes a plan
directory) and the device runtime (which loads it). It holds the data model,
the cost formula and the JSON form; it does no inference.

A plan directory::

    PLANDIR/
      plan.json
      device/heads/<option>.onnx      heads of the candidate cuts (device side)
      device/fallback.onnx            the small full model (device side)
      device/local.onnx               the full model, when it fits on the device (optional)
      server/<tail_model>/1/model.onnx  tails in a V2 (Triton-layout) model repository

``plan.json`` (format 1)::

    {"format": 1,
     "model": {"name": "digits", "sha256": "<sha256 of the source ONNX file>"},
     "inputs":  [{"name": "x", "dtype": "float32", "shape": [1, 1, 8, 8]}],
     "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, 10]}],
     "options": [<option>, ...],
     "table": {"bandwidths_bps": [...], "rtts_s": [...],
               "choices": [[<option id>, ... one per rtt], ... one row per bandwidth]},
     "profiles": {"device": {...}, "server": {...}}}

An option is one way to answer a request::

    {"id": "split:c12:fp16", "kind": "split", "cut_id": "c12", "codec": "fp16",
     "head": "device/heads/split-c12-fp16.onnx", "head_sha256": "...",
     "tail_model": "digits.c12.fp16.<sha256[:12]>", "tail_version": "1", "tail_sha256": "...",
     "wire": [{"name": ..., "dtype": ..., "shape": [...]}],
     "bytes": 1234, "head_seconds": 0.0012, "tail_seconds": 0.0004,
     "serialize_seconds": 0.00002, "accuracy": 0.97, "fidelity": {...}}
    {"id": "local", "kind": "local", "model": "device/local.onnx", "sha256": "...",
     "seconds": 0.02, "accuracy": 0.98}
    {"id": "fallback", "kind": "fallback", "model": "device/fallback.onnx", "sha256": "...",
     "seconds": 0.002, "accuracy": 0.91}

Full offload (send the input) is a ``split`` option whose cut is the graph inputs.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from splitinf.errors import IntegrityError, OutputError, PlanError

__all__ = [
    "PLAN_FORMAT",
    "DecisionTable",
    "Option",
    "Plan",
    "TensorSpec",
    "content_addressed_name",
    "expected_latency",
    "load_plan",
    "sha256_file",
    "write_json_atomic",
]

PLAN_FORMAT = 1

OptionKind = Literal["split", "local", "fallback"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "float16", "int8", "uint8", "int64", "bool"
    shape: tuple[int | str | None, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(name=str(data["name"]), dtype=str(data["dtype"]), shape=tuple(data["shape"]))


@dataclass(frozen=True)
class Option:
    """One way to answer a request: split at a cut with a codec, or run a whole model locally."""

    id: str
    kind: OptionKind
    accuracy: float | None = None
    # split options
    cut_id: str | None = None
    codec: str | None = None
    head: str | None = None
    head_sha256: str | None = None
    tail_model: str | None = None
    tail_version: str = "1"
    tail_sha256: str | None = None
    wire: tuple[TensorSpec, ...] = ()
    bytes: int = 0
    head_seconds: float = 0.0
    tail_seconds: float = 0.0
    serialize_seconds: float = 0.0
    # local and fallback options
    model: str | None = None
    sha256: str | None = None
    seconds: float = 0.0
    fidelity: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_remote(self) -> bool:
        return self.kind == "split"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "kind": self.kind, "accuracy": self.accuracy}
        if self.kind == "split":
            data.update(
                cut_id=self.cut_id,
                codec=self.codec,
                head=self.head,
                head_sha256=self.head_sha256,
                tail_model=self.tail_model,
                tail_version=self.tail_version,
                tail_sha256=self.tail_sha256,
                wire=[t.to_json() for t in self.wire],
                bytes=self.bytes,
                head_seconds=self.head_seconds,
                tail_seconds=self.tail_seconds,
                serialize_seconds=self.serialize_seconds,
            )
        else:
            data.update(model=self.model, sha256=self.sha256, seconds=self.seconds)
        if self.fidelity:
            data["fidelity"] = dict(self.fidelity)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Option:
        kind = data.get("kind")
        if kind not in ("split", "local", "fallback"):
            raise PlanError(f"option {data.get('id')!r} has kind {kind!r}; expected split, local or fallback")
        try:
            common: dict[str, Any] = dict(
                id=str(data["id"]),
                kind=kind,
                accuracy=None if data.get("accuracy") is None else float(data["accuracy"]),
                fidelity=dict(data.get("fidelity") or {}),
            )
            if kind == "split":
                return cls(
                    **common,
                    cut_id=str(data["cut_id"]),
                    codec=str(data.get("codec") or "fp32"),
                    head=str(data["head"]),
                    head_sha256=data.get("head_sha256"),
                    tail_model=str(data["tail_model"]),
                    tail_version=str(data.get("tail_version") or "1"),
                    tail_sha256=data.get("tail_sha256"),
                    wire=tuple(TensorSpec.from_json(t) for t in data.get("wire", ())),
                    bytes=int(data["bytes"]),
                    head_seconds=float(data.get("head_seconds", 0.0)),
                    tail_seconds=float(data.get("tail_seconds", 0.0)),
                    serialize_seconds=float(data.get("serialize_seconds", 0.0)),
                )
            return cls(
                **common,
                model=str(data["model"]),
                sha256=data.get("sha256"),
                seconds=float(data.get("seconds", 0.0)),
            )
        except KeyError as exc:
            raise PlanError(f"option {data.get('id')!r} lacks the field {exc.args[0]!r}") from exc


TAIL_NAME_SHA256_CHARS = 12


def content_addressed_name(base: str, sha256: str) -> str:
    """A tail's model name that carries its content, ``<base>.<first 12 hex digits of its sha256>``:
    a server answers to it only when it was given that very file (see ``splitinf.edge.identity``)."""
    return f"{base}.{sha256[:TAIL_NAME_SHA256_CHARS]}"


def expected_latency(option: Option, bandwidth_bps: float, rtt_s: float) -> float:
    """The cost model: expected seconds to answer one request with ``option``.

    split: head on the device + serialisation + bytes / bandwidth + round trip + tail on the server.
    local/fallback: the model's run time on the device (the network plays no part).
    """
    if option.kind != "split":
        return option.seconds
    if bandwidth_bps <= 0:
        return math.inf
    transfer = option.bytes * 8.0 / bandwidth_bps
    return option.head_seconds + option.serialize_seconds + transfer + rtt_s + option.tail_seconds


@dataclass(frozen=True)
class DecisionTable:
    """The planner's precomputed choice per (bandwidth, rtt) grid point; lookup rounds down."""

    bandwidths_bps: tuple[float, ...]
    rtts_s: tuple[float, ...]
    choices: tuple[tuple[str, ...], ...]  # choices[i][j] for bandwidths_bps[i], rtts_s[j]

    def __post_init__(self) -> None:
        if list(self.bandwidths_bps) != sorted(self.bandwidths_bps) or list(self.rtts_s) != sorted(self.rtts_s):
            raise PlanError("the decision table's bandwidths and rtts must be sorted ascending")
        if len(self.choices) != len(self.bandwidths_bps) or any(len(row) != len(self.rtts_s) for row in self.choices):
            raise PlanError("the decision table's choices must have one row per bandwidth, one column per rtt")

    def lookup(self, bandwidth_bps: float, rtt_s: float) -> str:
        """The choice at the nearest grid point that is no better than the estimate (pessimistic)."""
        i = max(bisect.bisect_right(self.bandwidths_bps, bandwidth_bps) - 1, 0)
        j = min(bisect.bisect_left(self.rtts_s, rtt_s), len(self.rtts_s) - 1)
        return self.choices[i][j]

    def to_json(self) -> dict[str, Any]:
        return {
            "bandwidths_bps": list(self.bandwidths_bps),
            "rtts_s": list(self.rtts_s),
            "choices": [list(row) for row in self.choices],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DecisionTable:
        return cls(
            bandwidths_bps=tuple(float(b) for b in data["bandwidths_bps"]),
            rtts_s=tuple(float(r) for r in data["rtts_s"]),
            choices=tuple(tuple(str(c) for c in row) for row in data["choices"]),
        )


@dataclass(frozen=True)
class Plan:
    model_name: str
    model_sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    options: tuple[Option, ...]
    table: DecisionTable | None = None
    profiles: Mapping[str, Any] = field(default_factory=dict)
    root: Path | None = None  # the plan directory, when loaded from one

    def __post_init__(self) -> None:
        ids = [o.id for o in self.options]
        if len(ids) != len(set(ids)):
            raise PlanError(f"the plan has duplicate option ids: {sorted(i for i in ids if ids.count(i) > 1)}")
        if self.table is not None:
            unknown = {c for row in self.table.choices for c in row} - set(ids)
            if unknown:
                raise PlanError(f"the decision table names options the plan lacks: {sorted(unknown)}")

    def option(self, option_id: str) -> Option:
        for o in self.options:
            if o.id == option_id:
                return o
        raise PlanError(f"the plan has no option {option_id!r}; it has {[o.id for o in self.options]}")

    @property
    def split_options(self) -> tuple[Option, ...]:
        return tuple(o for o in self.options if o.kind == "split")

    @property
    def fallback(self) -> Option | None:
        return next((o for o in self.options if o.kind == "fallback"), None)

    @property
    def local(self) -> Option | None:
        return next((o for o in self.options if o.kind == "local"), None)

    def path(self, relative: str) -> Path:
        if self.root is None:
            raise PlanError("this plan was not loaded from a directory, so it has no files")
        return self.root / relative

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": PLAN_FORMAT,
            "model": {"name": self.model_name, "sha256": self.model_sha256},
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "options": [o.to_json() for o in self.options],
        }
        if self.table is not None:
            data["table"] = self.table.to_json()
        if self.profiles:
            data["profiles"] = dict(self.profiles)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], root: Path | None = None) -> Plan:
        if data.get("format") != PLAN_FORMAT:
            raise PlanError(
                f"plan format {data.get('format')!r} is not supported (expected {PLAN_FORMAT}); "
                "re-run `splitinf plan` with this version"
            )
        try:
            return cls(
                model_name=str(data["model"]["name"]),
                model_sha256=str(data["model"]["sha256"]),
                inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
                outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
                options=tuple(Option.from_json(o) for o in data["options"]),
                table=DecisionTable.from_json(data["table"]) if data.get("table") else None,
                profiles=dict(data.get("profiles") or {}),
                root=root,
            )
        except (KeyError, TypeError) as exc:
            raise PlanError(f"plan.json is malformed ({exc!r}); re-run `splitinf plan`") from exc


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_plan(plan_dir: str | os.PathLike[str], *, check_files: Sequence[str] = ("device",)) -> Plan:
    """Read ``plan_dir/plan.json``; check the sha256 of the files on the named sides ("device", "server")."""
    root = Path(plan_dir)
    plan_file = root / "plan.json"
    if not plan_file.is_file():
        raise PlanError(f"{plan_file} does not exist; point at a directory written by `splitinf plan`")
    try:
        data = json.loads(plan_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"{plan_file} is not readable JSON ({exc}); re-run `splitinf plan`") from exc
    plan = Plan.from_json(data, root=root)
    for option in plan.options:
        files: list[tuple[str | None, str | None]] = []
        if "device" in check_files:
            files.append((option.head, option.head_sha256) if option.kind == "split" else (option.model, option.sha256))
        if "server" in check_files and option.kind == "split":
            files.append((f"server/{option.tail_model}/{option.tail_version}/model.onnx", option.tail_sha256))
        for relative, expected in files:
            if relative is None:
                continue
            path = root / relative
            if not path.is_file():
                raise PlanError(f"the plan's option {option.id!r} needs {path}, which is missing")
            if expected is not None and sha256_file(path) != expected:
                raise IntegrityError(
                    f"{path} has sha256 {sha256_file(path)}, but the plan expects {expected}; "
                    "the file was changed or comes from another plan"
                )
    return plan


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never a part."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}; choose a writable location") from exc
