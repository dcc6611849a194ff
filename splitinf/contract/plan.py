"""The plan: the options a device holds and the one rule that picks which to use.

This module is the contract between the planner (``splitinf plan`` writes a plan
directory) and the device runtime (which loads it). It holds the data model,
the cost formula (:func:`expected_latency`), the decision rule (:func:`choose_option`,
which the device's policy and the plan and bench reports all call) and the JSON form;
it does no inference.

A plan directory::

    PLANDIR/
      plan.json
      device/segments/NN-<cut>.onnx   the model cut at the candidate cuts: segment k runs from cut k-1 to cut k
      device/segments-int8/NN-<cut>.onnx  int8 heads' segments (int8 twins; fp32 where there is nothing to quantize)
      device/codecs/<cut>-<codec>.onnx  a codec's own small graph (Cast, QuantizeLinear) at a cut
      device/fallback.onnx            the small full model (device side)
      server/<tail_model>/1/model.onnx  tails in a V2 (Triton-layout) model repository

Each weight is on the device once: a split option's head is the segments up to its cut then its
codec graph, and the local option (the full model, when it fits on the device) is every segment
plus the last one to the outputs. A device model is an ordered list of ONNX files run as a chain
over one name -> tensor map: each file takes its inputs by name from the plan's inputs and the
earlier files' outputs (:mod:`splitinf.edge.chain`).

``plan.json`` (format 2)::

    {"format": 2,
     "model": {"name": "digits", "sha256": "<sha256 of the source ONNX file>"},
     "inputs":  [{"name": "x", "dtype": "float32", "shape": [1, 1, 8, 8]}],
     "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, 10]}],
     "options": [<option>, ...],
     "budget_s": 0.25,
     "inputs_at": {"source": "shapes", "inputs": {"x": {"dtype": "float32", "shape": [1, 1, 8, 8]}}},
     "profiles": {"device": {...}, "server": {...}}}

``budget_s`` is the latency budget the plan's report marks choices with (default
:data:`DEFAULT_BUDGET_S`, the device's default). Plans written before it existed carried a
"table" (a least-latency choice per grid point, which the device never used); loading ignores it.
``inputs_at`` records the input shapes the options' bytes and times hold at (from the samples, the
user's ``--shape`` or the profiles'); the device warns once per input of another shape. Plans
without it load with ``{}`` (no check).

An option is one way to answer a request::

    {"id": "split:c12:fp16", "kind": "split", "cut_id": "c12", "codec": "fp16",
     "head": ["device/segments/01-c7.onnx", "device/segments/02-c12.onnx", "device/codecs/c12-fp16.onnx"],
     "head_sha256": ["...", "...", "..."],
     "tail_model": "digits.c12.fp16.<sha256[:12]>", "tail_version": "1", "tail_sha256": "...",
     "wire": [{"name": ..., "dtype": ..., "shape": [...]}],
     "wire_bytes": 1234, "response_bytes": 40, "head_seconds": 0.0012, "tail_seconds": 0.0004,
     "serialize_seconds": 0.00002, "accuracy": 0.97, "fidelity": {...},
     "precision": "fp32", "device_bytes": 52000}
    {"id": "split:c12:fp16:int8head", "kind": "split", ...,
     "head": ["device/segments-int8/01-c3.onnx", "device/segments-int8/02-c12.onnx", "device/codecs/c12-fp16.onnx"],
     "head_sha256": ["...", "...", "..."], "tail_model": "digits.c12.fp16.<sha256[:12]>", ..., "precision": "int8", ...}
    {"id": "local", "kind": "local", "model": ["device/segments/01-c7.onnx", ..., "device/segments/03-outputs.onnx"],
     "sha256": ["...", ...], "seconds": 0.02, "accuracy": 0.98, "precision": "fp32", "device_bytes": 155000}
    {"id": "fallback", "kind": "fallback", "model": ["device/fallback.onnx"], "sha256": ["..."],
     "seconds": 0.002, "accuracy": 0.91, "precision": "int8", "device_bytes": 3000}

Full offload (send the input) is a ``split`` option whose cut is the graph inputs; at fp32 its head
is the empty list (the inputs are the wire). Format 1 plans (one ``head``/``model`` file as a
string, its sha256 a string) still load, as chains of one file. ``precision`` is that of the model
the device runs (a split option's head, a local or fallback option's model; "fp32" or "int8"),
separate from the wire ``codec``; ``device_bytes`` is the sum of the sizes of the option's files
(segments shared with other options counted in each; 0 when unknown). An fp32 head is segments of
the model plus its codec's graph; an int8 head is int8 segments (each int8 weight once, too) plus
the same codec graph, its option id ending in ``:int8head`` (``split:c12:fp16:int8head``), its tail
its fp32 twin's. Plans from before int8 heads were chains (one file each, in ``device/heads/``) load
as they are.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from splitinf.contract.tensors import TensorSpec
from splitinf.errors import PlanError

__all__ = [
    "AS_PROFILED",
    "DEFAULT_BUDGET_S",
    "DEFAULT_MAX_ACCURACY_DROP",
    "PLAN_FORMAT",
    "Correction",
    "Option",
    "Plan",
    "choose_option",
    "content_addressed_name",
    "expected_latency",
    "load_plan",
]

PLAN_FORMAT = 2
_READABLE_FORMATS = (1, 2)  # format 1: one head file per option (each carrying its own weights)
DEFAULT_BUDGET_S = 0.25  # seconds per request: the device's default budget and the plan's
# How much accuracy (top-1, or agreement with the full model) an option may lose and still be held.
DEFAULT_MAX_ACCURACY_DROP = 0.01

OptionKind = Literal["split", "local", "fallback"]


@dataclass(frozen=True)
class Option:
    """One way to answer a request: split at a cut with a codec, or run a whole model on the device."""

    id: str
    kind: OptionKind
    accuracy: float | None = None
    # split options
    cut_id: str | None = None
    codec: str | None = None
    head: tuple[str, ...] = ()  # the files the device runs in order to make the wire tensors
    head_sha256: tuple[str | None, ...] = ()
    tail_model: str | None = None
    tail_version: str = "1"
    tail_sha256: str | None = None
    wire: tuple[TensorSpec, ...] = ()
    wire_bytes: int = 0  # bytes of one request's wire tensors (what crosses the network)
    response_bytes: int = 0  # bytes of the answer's tensors (the model's outputs), which cross it back
    head_seconds: float = 0.0
    tail_seconds: float = 0.0
    serialize_seconds: float = 0.0
    # local and fallback options
    model: tuple[str, ...] = ()  # the files the device runs in order to make the outputs
    sha256: tuple[str | None, ...] = ()
    seconds: float = 0.0
    fidelity: Mapping[str, Any] = field(default_factory=dict)
    # the model the device runs (head or whole model): its precision and file size
    precision: str = "fp32"
    device_bytes: int = 0

    def __post_init__(self) -> None:
        # one file given as a string is a chain of one (iterating the string would give its characters)
        for name in ("head", "head_sha256", "model", "sha256"):
            value = getattr(self, name)
            if value is None or isinstance(value, str):
                object.__setattr__(self, name, () if value is None else (value,))
            elif not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        for files, digests in ((self.head, self.head_sha256), (self.model, self.sha256)):
            if digests and len(digests) != len(files):
                raise PlanError(f"option {self.id!r} lists {len(files)} files but {len(digests)} sha256 values")

    @property
    def is_remote(self) -> bool:
        return self.kind == "split"

    @property
    def device_files(self) -> tuple[tuple[str, str | None], ...]:
        """(path in the plan directory, sha256) of each file the device runs for this option, in order."""
        files, digests = (self.head, self.head_sha256) if self.kind == "split" else (self.model, self.sha256)
        return tuple(zip(files, digests or (None,) * len(files), strict=True))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "accuracy": self.accuracy,
            "precision": self.precision,
            "device_bytes": self.device_bytes,
        }
        if self.kind == "split":
            data.update(
                cut_id=self.cut_id,
                codec=self.codec,
                head=list(self.head),
                head_sha256=list(self.head_sha256),
                tail_model=self.tail_model,
                tail_version=self.tail_version,
                tail_sha256=self.tail_sha256,
                wire=[t.to_json() for t in self.wire],
                wire_bytes=self.wire_bytes,
                response_bytes=self.response_bytes,
                head_seconds=self.head_seconds,
                tail_seconds=self.tail_seconds,
                serialize_seconds=self.serialize_seconds,
            )
        else:
            data.update(model=list(self.model), sha256=list(self.sha256), seconds=self.seconds)
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
                precision=str(data.get("precision") or "fp32"),
                device_bytes=int(data.get("device_bytes") or 0),
            )
            if kind == "split":
                return cls(
                    **common,
                    cut_id=str(data["cut_id"]),
                    codec=str(data.get("codec") or "fp32"),
                    head=_files(data["head"]),
                    head_sha256=_digests(data.get("head_sha256")),
                    tail_model=str(data["tail_model"]),
                    tail_version=str(data.get("tail_version") or "1"),
                    tail_sha256=data.get("tail_sha256"),
                    wire=tuple(TensorSpec.from_json(t) for t in data.get("wire", ())),
                    # older plans call it "bytes"
                    wire_bytes=int(data["wire_bytes"] if "wire_bytes" in data else data["bytes"]),
                    response_bytes=int(data.get("response_bytes", 0)),  # older plans: not counted
                    head_seconds=float(data.get("head_seconds", 0.0)),
                    tail_seconds=float(data.get("tail_seconds", 0.0)),
                    serialize_seconds=float(data.get("serialize_seconds", 0.0)),
                )
            return cls(
                **common,
                model=_files(data["model"]),
                sha256=_digests(data.get("sha256")),
                seconds=float(data.get("seconds", 0.0)),
            )
        except KeyError as exc:
            raise PlanError(f"option {data.get('id')!r} lacks the field {exc.args[0]!r}") from exc


TAIL_NAME_SHA256_CHARS = 12


def content_addressed_name(base: str, sha256: str) -> str:
    """A tail's model name that carries its content, ``<base>.<first 12 hex digits of its sha256>``:
    a server answers to it only when it was given that very file (see ``splitinf.edge.identity``)."""
    return f"{base}.{sha256[:TAIL_NAME_SHA256_CHARS]}"


def _files(value: Any) -> tuple[str, ...]:
    """A device model in plan.json: a list of files (format 2) or one file (format 1)."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PlanError(f"a device model must be a list of file paths, got {value!r}; re-run `splitinf plan`")
    return tuple(value)


def _digests(value: Any) -> tuple[str | None, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        raise PlanError(f"sha256 values must be a list, got {value!r}; re-run `splitinf plan`")
    return tuple(None if v is None else str(v) for v in value)


@dataclass(frozen=True)
class Correction:
    """How the machines run now against their profiles: what the device has observed.

    Each factor is a smoothed ratio of observed to profiled time (1.0: as profiled). Heads and
    tails have one per split option the device has run lately (``heads``/``tails``, by option
    id), and one per kind (``head``/``tail``) for the options it has not: a throttled Pi slows
    every head. ``queues`` hold, per split option run lately, the time its requests wait on the
    server before their tail runs (the server reports it, ``splitinf_queue_ns``), which no
    profile holds; a server queues per model (as Triton's instance groups do), so an option not
    run lately is priced without a queue, as profiled, and the device finds out by trying it. The device keeps
    these live (:mod:`splitinf.edge.correction`); the planner and reports use :data:`AS_PROFILED`.
    """

    head: float = 1.0
    tail: float = 1.0
    local: float = 1.0
    fallback: float = 1.0
    heads: Mapping[str, float] = field(default_factory=dict)
    tails: Mapping[str, float] = field(default_factory=dict)
    queues: Mapping[str, float] = field(default_factory=dict)

    def head_factor(self, option_id: str) -> float:
        return self.heads.get(option_id, self.head)

    def tail_factor(self, option_id: str) -> float:
        return self.tails.get(option_id, self.tail)

    def queue_s(self, option_id: str) -> float:
        return self.queues.get(option_id, 0.0)

    def to_json(self) -> dict[str, Any]:
        def rounded(factors: Mapping[str, float]) -> dict[str, float]:
            return {key: round(value, 4) for key, value in sorted(factors.items())}

        return {
            "head": round(self.head, 4),
            "tail": round(self.tail, 4),
            "local": round(self.local, 4),
            "fallback": round(self.fallback, 4),
            "heads": rounded(self.heads),
            "tails": rounded(self.tails),
            "queues_s": {key: round(value, 6) for key, value in sorted(self.queues.items())},
        }


AS_PROFILED = Correction()


def expected_latency(option: Option, bandwidth_bps: float, rtt_s: float, correction: Correction = AS_PROFILED) -> float:
    """The cost model: expected seconds to answer one request with ``option``.

    split: head on the device + serialisation + bytes / bandwidth + round trip + the server's
    queue + tail on the server, the bytes being the request's and the answer's (a detector's output
    map weighs as much as its input). local/fallback: the model's run time on the device (the network
    plays no part). ``correction`` scales the profiled times to the machines as they run now.
    """
    if option.kind == "local":
        return option.seconds * correction.local
    if option.kind == "fallback":
        return option.seconds * correction.fallback
    if bandwidth_bps <= 0:
        return math.inf
    transfer = (option.wire_bytes + option.response_bytes) * 8.0 / bandwidth_bps
    return (
        option.head_seconds * correction.head_factor(option.id)
        + option.serialize_seconds
        + transfer
        + rtt_s
        + correction.queue_s(option.id)
        + option.tail_seconds * correction.tail_factor(option.id)
    )


def choose_option(
    options: Sequence[Option],
    bandwidth_bps: float,
    rtt_s: float,
    budget_s: float,
    correction: Correction = AS_PROFILED,
) -> tuple[Option, float] | None:
    """The decision rule: the most accurate option expected within ``budget_s`` (ties go to the faster).

    Returns the option and its :func:`expected_latency` (under ``correction``), or None when none
    is expected to fit (the device then answers from its fallback). An option without a measured
    accuracy counts as 0.
    """
    scored = [(o, expected_latency(o, bandwidth_bps, rtt_s, correction)) for o in options]
    fitting = [(o, s) for o, s in scored if s <= budget_s]
    if not fitting:
        return None
    return max(fitting, key=lambda c: (c[0].accuracy or 0.0, -c[1]))


@dataclass(frozen=True)
class Plan:
    model_name: str
    model_sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    options: tuple[Option, ...]
    budget_s: float = DEFAULT_BUDGET_S
    profiles: Mapping[str, Any] = field(default_factory=dict)
    inputs_at: Mapping[str, Any] = field(default_factory=dict)  # the shapes bytes and times hold at
    root: Path | None = None  # the plan directory, when loaded from one

    def __post_init__(self) -> None:
        ids = [o.id for o in self.options]
        if len(ids) != len(set(ids)):
            raise PlanError(f"the plan has duplicate option ids: {sorted(i for i in ids if ids.count(i) > 1)}")
        if not self.budget_s > 0:
            raise PlanError(f"the plan's budget_s must be > 0, got {self.budget_s!r}; re-run `splitinf plan`")

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

    def planned(
        self,
        bandwidth_bps: float,
        rtt_s: float,
        budget_s: float | None = None,
        correction: Correction = AS_PROFILED,
    ) -> tuple[Option, float] | None:
        """What a healthy device answers with at these estimates: :func:`choose_option` over every
        option, else the fallback; None only for a plan without a fallback. ``budget_s`` defaults
        to the plan's."""
        budget = self.budget_s if budget_s is None else budget_s
        chosen = choose_option(self.options, bandwidth_bps, rtt_s, budget, correction)
        if chosen is None and self.fallback is not None:
            return self.fallback, expected_latency(self.fallback, bandwidth_bps, rtt_s, correction)
        return chosen

    def zero_inputs(self) -> dict[str, np.ndarray]:
        """Zeros for each input at the shapes the plan was made at (``inputs_at``), else with symbolic dimensions 1."""
        recorded = dict(self.inputs_at.get("inputs") or {})
        return {
            s.name: np.zeros(recorded[s.name]["shape"], s.dtype) if s.name in recorded else s.zeros()
            for s in self.inputs
        }

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
            "budget_s": self.budget_s,
        }
        if self.inputs_at:
            data["inputs_at"] = dict(self.inputs_at)
        if self.profiles:
            data["profiles"] = dict(self.profiles)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], root: Path | None = None) -> Plan:
        if data.get("format") not in _READABLE_FORMATS:
            raise PlanError(
                f"plan format {data.get('format')!r} is not supported (this version reads formats "
                f"{', '.join(map(str, _READABLE_FORMATS))}); "
                "re-run `splitinf plan` with this version"
            )
        try:
            return cls(
                model_name=str(data["model"]["name"]),
                model_sha256=str(data["model"]["sha256"]),
                inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
                outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
                options=tuple(Option.from_json(o) for o in data["options"]),
                budget_s=float(data.get("budget_s", DEFAULT_BUDGET_S)),
                profiles=dict(data.get("profiles") or {}),
                inputs_at=dict(data.get("inputs_at") or {}),
                root=root,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"plan.json is malformed ({exc!r}); re-run `splitinf plan`") from exc


def load_plan(plan_dir: str | os.PathLike[str], *, check_files: Sequence[str] = ("device",)) -> Plan:
    """Read ``plan_dir/plan.json``; check the files on the named sides ("device", "server"): see ``plandir``."""
    root = Path(plan_dir)
    plan_file = root / "plan.json"
    if not plan_file.is_file():
        raise PlanError(f"{plan_file} does not exist; point at a directory written by `splitinf plan`")
    try:
        data = json.loads(plan_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"{plan_file} is not readable JSON ({exc}); re-run `splitinf plan`") from exc
    plan = Plan.from_json(data, root=root)
    from splitinf.contract.plandir import check_plan_files  # plandir builds on this module

    check_plan_files(plan, check_files, unsigned=data.get("unsigned") is True)
    return plan
