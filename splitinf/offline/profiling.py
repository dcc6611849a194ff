"""Measure how long a model's heads and tails take on this machine, and write a profile.

``splitinf profile --role device`` runs this on the device and times only what runs there: the
heads, the codecs' encoding ops, building the request, the full model (the local option) and the
fallback. ``--role server`` runs on the server and times only the tails, the decoding ops and
parsing the request. ``--role both`` (the default, for one machine and for tests) times everything;
its profile serves as either. Everything runs one request at a time in sessions with splitinf's
default settings and ``threads`` intra-op threads (:mod:`splitinf.ort`): how the device runtime runs
a head with ``intra_op_threads = threads``. The tail server may batch and serve several devices at
once: give ``threads`` the server's intra-op thread count, and read a tail's time as one request's
on an idle server (the server reports its real compute time in each response).

Heads and tails are not timed one by one. The model is cut into the chain of segments between
consecutive candidate cuts (:mod:`splitinf.offline.segments`); each segment is timed once, and the
head at a cut is the sum of the segments before it, the tail the sum of those after it. A codec's
cost is its own op timed alone on the cut tensors (the Cast or QuantizeLinear that ends the head,
the Cast or DequantizeLinear that starts the tail), added to the fp32 head or tail. Segments run
apart cost more than inside one graph (a run's fixed overhead, fusions and buffer reuse across
their boundaries), so a few whole heads (tails on the server) and the full model are timed too:
the sums are scaled by the whole/summed ratio, interpolated along the chain between those anchors.
Where a part was timed whole (a checked cut, a head or tail of one segment, the full model) that
timing stands as it is.
``check`` reports each whole part's ``error`` (raw sum against it) and ``held_out_error`` (the
scaled sum estimated from the other anchors: the error to expect at the cuts not checked), on the
fastest runs (``min``), as the scale is computed: a long run is likelier than a short one to be
slowed by other load on the machine, which would bias a ratio of medians.

Each part gets warm-up runs, then repeats summarised by median and p90, in two or more separate
passes over everything; it keeps its quietest pass (other load comes in bursts).

Parts are appended to ``OUTPUT.partial`` (one JSON line each) as they are measured: Ctrl-C or a
crash keeps them, and a rerun with the same model (sha256), inputs and settings skips them.

Profile JSON (format 2; format 1, from before roles, reads as role ``both``)::

    {"format": 2, "kind": "splitinf-profile", "role": "device",
     "model": {"name": "m", "sha256": "..."},
     "machine": {"platform": ..., "cpu_count": 4, "cpu_model": ...},
     "onnxruntime": {"version": "1.31.0", "providers": ["CPUExecutionProvider"], "threads": 4},
     "settings": {"repeats": 20, "warmup": 3, "passes": 2, "codecs": ["fp32", "fp16", "int8"]},
     "inputs": {"source": "samples", "inputs": {"x": {"dtype": "float32", "shape": [1, 3, 320, 448]}}},
     "model_seconds": <timing>,   # the full model: the local option, and the tail from the input
     "segments": [{"end": "c3", "nodes": 4, "seconds": <timing>}, ...],
     "check": {"parts": [{"cut": "c7", "part": "head", "whole": 0.012, "summed": 0.0124, "error": 0.033,
                          "held_out_error": -0.02}],
               "max_abs_error": 0.033, "max_abs_held_out_error": 0.02},
     "cuts": [{"id": "c3", "bytes": 2048,
               "codecs": {"fp16": {"head": <timing>, "encode": <timing>, "serialize": <timing>,
                                   "wire_bytes": 1024,
                                   "int8_head": <timing>}}}, ...],   # server: tail, decode, deserialize
     "notes": ["cut ids: no codec fp16/int8, its int64 tensors travel as they are (fp32)"],
     "fallback": {"name": "small", "sha256": "...", "seconds": <timing>, "int8_seconds": <timing>}}

``int8_head`` and ``int8_seconds`` (``--quantize int8``, device): the head with int8 weights
(:mod:`splitinf.offline.quantize`) and the same codec, summed from the segments' int8 twins (each
segment quantized alone, as the plan's int8 heads are chains of int8 segments; a segment without
weights counts at its fp32 time) and scaled by whole int8 heads at the checked cuts; a head without
weights has none.

A summed timing adds its parts' medians, p90s and minimums. ``inputs`` are the shapes everything
was timed at (the user's samples or ``--shape``, else random inputs with dynamic dimensions 1:
``source`` says which); a cut lists only the codecs that apply there, and ``notes`` says why one is
missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnx
import onnxruntime as ort

from splitinf.contract.files import sha256_file, write_json_atomic, write_text_atomic
from splitinf.contract.stats import quantile
from splitinf.errors import PlanError
from splitinf.offline import inputs as inputs_
from splitinf.offline.codecs import (
    CODEC_OPSET,
    QUANTIZED,
    QuantParams,
    applicable_codecs,
    encode,
    for_codec,
    parse_codecs,
)
from splitinf.offline.graph import Cut, GraphView, load_model, spec_value_info
from splitinf.offline.inputs import InputSet
from splitinf.offline.partition import split_model
from splitinf.offline.quantize import has_weights, parse_quantize, quantize_method, quantize_model
from splitinf.offline.segments import Segment, chain_segments, last_uses, segment_model
from splitinf.offline.sessions import make_session
from splitinf.ort import SERVING_SETTINGS, SessionSettings

__all__ = [
    "PROFILE_FORMAT",
    "ROLES",
    "ProgressBar",
    "Timing",
    "check_role",
    "journal_path",
    "load_profile",
    "machine_info",
    "profile_file",
    "profile_model",
    "time_callable",
]

PROFILE_FORMAT = 2
ROLES = ("device", "server", "both")
_READABLE_FORMATS = (1, PROFILE_FORMAT)  # format 1 has no role: it timed everything, as "both" does
_JOURNAL_KIND = "splitinf-profile-parts"
_CHECKED_CUTS = 3  # whole heads/tails timed to check the segment sums against


@dataclass(frozen=True)
class Timing:
    median: float
    p90: float
    min: float
    repeats: int

    def to_json(self) -> dict[str, Any]:
        return {"median": self.median, "p90": self.p90, "min": self.min, "repeats": self.repeats}

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        return cls(
            median=float(statistics.median(seconds)),
            p90=quantile(seconds, 0.9),
            min=float(min(seconds)),
            repeats=len(seconds),
        )

    @classmethod
    def total(cls, parts: Sequence[Timing], repeats: int) -> Timing:
        """Parts run one after another: their medians, p90s and minimums added (zero for no parts)."""
        return cls(
            median=sum(t.median for t in parts),
            p90=sum(t.p90 for t in parts),
            min=sum(t.min for t in parts),
            repeats=min((t.repeats for t in parts), default=repeats),
        )


def time_callable(
    fn: Callable[[], object],
    *,
    repeats: int,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
    pause_s: float = 0.0,
) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed, each after ``pause_s`` idle."""
    if repeats < 1:
        raise PlanError(f"--repeats must be at least 1, got {repeats}")
    for _ in range(max(warmup, 0)):
        fn()
    seconds = []
    for _ in range(repeats):
        if pause_s > 0:
            time.sleep(pause_s)
        start = clock()
        fn()
        seconds.append(clock() - start)
    return Timing.of(seconds)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
    }


def _clock_text(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class ProgressBar:
    """A one-line progress bar on a stream (stderr) with the time taken and an ETA (the steps left times
    the median step so far); silent when not enabled."""

    def __init__(
        self,
        total: int,
        *,
        enabled: bool,
        stream: IO[str] | None = None,
        width: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.clock = clock
        self.started = self.last = clock()
        self.step_seconds: list[float] = []

    def eta_s(self) -> float:
        """Seconds left: the steps left times the median step so far (0 before the first step)."""
        if not self.step_seconds:
            return 0.0
        return statistics.median(self.step_seconds) * max(self.total - self.done, 0)

    def step(self, label: str) -> None:
        now = self.clock()
        self.step_seconds.append(now - self.last)
        self.last = now
        self.done += 1
        if not self.enabled:
            return
        filled = self.width * min(self.done, self.total) // self.total
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = _clock_text(now - self.started)
        timing = f"{elapsed} elapsed" if self.done >= self.total else f"{elapsed}, ETA {_clock_text(self.eta_s())}"
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {label[:40]:<40} {timing}")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def _serialize(values: Mapping[str, np.ndarray]) -> bytes:
    """What the device's client does per request: build the V2 request, and gRPC serialises it."""
    from splitinf.protocol import grpc_service_pb2 as pb
    from splitinf.protocol.tensors import encode_request

    return encode_request(pb.ModelInferRequest(model_name="m"), values).SerializeToString()


def _deserialize(data: bytes) -> int:
    """What the server does per request before running the tail: parse it and view the tensors."""
    from splitinf.protocol import grpc_service_pb2 as pb
    from splitinf.protocol.tensors import decode_request_inputs

    request = pb.ModelInferRequest()
    request.ParseFromString(data)
    return len(decode_request_inputs(request))


def _quietest(timings: Sequence[Timing]) -> Timing:
    """Of one item's per-pass timings, the pass with the least median: the one least disturbed by
    other load on the machine (bursts of it last seconds, so a whole pass can fall inside one)."""
    return min(timings, key=lambda t: t.median)


def _fallback_feeds(small: ort.InferenceSession, inputs: InputSet, seed: int) -> dict[str, np.ndarray]:
    """The profiled inputs when the fallback takes the same ones, else random inputs for it."""
    specs = inputs_.session_input_specs(small)
    if all(s.name in inputs.first for s in specs):
        return {s.name: inputs.first[s.name] for s in specs}
    return inputs_.random_inputs(specs, seed, batch=1, integers="zeros")


# --- the journal: parts kept as they are measured ----------------------------------------------------


def journal_path(output: str | os.PathLike[str]) -> Path:
    """Where ``splitinf profile -o OUTPUT`` keeps the parts measured so far: ``OUTPUT.partial``."""
    target = Path(output)
    return target.with_name(target.name + ".partial")


def _json_line(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None  # a line cut short by a crash


class _Journal:
    """The parts measured so far, one JSON line each appended to ``path`` as they are measured, under a
    header with what they were measured on (model sha256, inputs, settings): a rerun with the same
    header resumes, another starts the file over."""

    def __init__(self, path: Path | None, key: Mapping[str, Any]) -> None:
        self.path = path
        self.header = {"kind": _JOURNAL_KIND, "key": json.loads(json.dumps(key))}
        self.done: dict[str, Timing] = {}
        if path is not None:
            self._load(path)
        self.resumed = len(self.done)

    def _load(self, path: Path) -> None:
        lines = path.read_text().splitlines() if path.is_file() else []
        if lines and _json_line(lines[0]) == self.header:
            for line in lines[1:]:
                entry = _json_line(line)
                if isinstance(entry, dict) and isinstance(entry.get("timing"), dict):
                    self.done[str(entry.get("part"))] = Timing(**entry["timing"])
        # rewritten whole: drops a torn last line, or the parts of other settings
        kept = [json.dumps(self.header)] + [self._line(p, t) for p, t in self.done.items()]
        write_text_atomic(path, "\n".join(kept) + "\n")

    @staticmethod
    def _line(part: str, timing: Timing) -> str:
        return json.dumps({"part": part, "timing": timing.to_json()})

    def record(self, part: str, timing: Timing) -> None:
        self.done[part] = timing
        if self.path is not None:
            with self.path.open("a") as journal:
                journal.write(self._line(part, timing) + "\n")


# --- what is timed -----------------------------------------------------------------------------------


@dataclass
class _Layout:
    """What a profile times: the cuts with their codecs, the chain of segments between them, and
    which parts the role needs."""

    model: onnx.ModelProto
    view: GraphView
    cuts: list[Cut]
    cut_codecs: dict[str, tuple[str, ...]]
    segments: list[Segment]
    reach: dict[str, int]  # cut id -> segments its head runs
    heads: bool  # the device's parts
    tails: bool  # the server's parts
    checks: list[Cut]
    fallback: bool
    # with --quantize int8, per segment whether it has weights to quantize (the device then times its int8 twin)
    int8_segments: list[bool] = field(default_factory=list)
    int8_fallback: bool = False
    wire_bytes: dict[tuple[str, str], int] = field(default_factory=dict)

    def int8_head(self, cut: Cut) -> bool:
        """Whether the head at ``cut`` has an int8 twin: with --quantize, on the device, with weights."""
        return self.heads and any(self.int8_segments[: self.reach[cut.id]])

    @property
    def segments_run(self) -> int:
        """Segments the walk runs: to the last head for the device, through every tail for the server."""
        return len(self.segments) if self.tails else max((self.reach[c.id] for c in self.cuts), default=0)

    @property
    def first_tail(self) -> int:
        return min((self.reach[c.id] for c in self.cuts), default=0)

    def segment_timed(self, index: int) -> bool:
        """The device times the segments of its heads, the server those of its tails."""
        return index < self.segments_run and (self.heads or index >= self.first_tail)

    def encodes(self, cut: Cut, codec: str) -> bool:
        """Whether the head at ``cut`` ends in a codec op: any codec but fp32, and fp32 at the input cut,
        whose head is a graph passing the inputs through (a session run, however empty)."""
        return codec != "fp32" or self.reach[cut.id] == 0

    def cut_keys(self, cut: Cut) -> list[tuple[str, ...]]:
        keys: list[tuple[str, ...]] = []
        for codec in self.cut_codecs[cut.id]:
            keys += [(cut.id, codec, "encode")] if self.encodes(cut, codec) and self.heads else []
            keys += [(cut.id, codec, "decode")] if codec != "fp32" and self.tails else []
            keys += [(cut.id, codec, "serialize")] if self.heads else []
            keys += [(cut.id, codec, "deserialize")] if self.tails else []
        return keys

    def keys(self) -> list[tuple[str, ...]]:
        """Every part one pass times, in the order it times them."""
        keys: list[tuple[str, ...]] = [("model",)]  # the local option; the server's tail from the input
        keys += [k for cut in self.cuts if self.reach[cut.id] == 0 for k in self.cut_keys(cut)]
        for index in range(self.segments_run):
            keys += [("segment", str(index))] if self.segment_timed(index) else []
            keys += (
                [("segment", str(index), "int8")]
                if self.heads and self.int8_segments[index : index + 1] == [True]
                else []
            )
            keys += [k for cut in self.cuts if self.reach[cut.id] == index + 1 for k in self.cut_keys(cut)]
        for cut in self.checks:
            keys += [("check", cut.id, "head")] if self.heads else []
            keys += [("check", cut.id, "int8_head")] if self.int8_head(cut) else []
            keys += [("check", cut.id, "tail")] if self.tails else []
        keys += [("fallback",)] if self.fallback and self.heads else []
        return keys + ([("fallback", "int8")] if self.int8_fallback and self.heads else [])


def _part_name(pass_index: int, key: Sequence[str]) -> str:
    return json.dumps([pass_index, *key])


def _checked_cuts(cuts: Sequence[Cut], reach: Mapping[str, int], count: int) -> list[Cut]:
    """Up to ``count`` cuts spread over the chain whose heads and tails both run segments."""
    inner = [c for c in cuts if 1 < reach[c.id] < max(reach.values(), default=0)]
    if len(inner) <= count:
        return inner
    return [inner[(2 * k + 1) * len(inner) // (2 * count)] for k in range(count)]


def _usable_codecs(
    model: onnx.ModelProto,
    cuts: Sequence[Cut],
    codecs: Sequence[str],
    sample: Mapping[str, np.ndarray],
    threads: int | None,
) -> tuple[tuple[str, ...], list[str]]:
    """The codecs whose ops the model's opset has, or that onnx's version converter brings it to (checked at
    one cut, as the planner will convert); a note for each codec dropped."""
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    low = [c for c in codecs if CODEC_OPSET.get(c, 1) > opset]
    inner = [c for c in cuts if c.head_nodes > 0] or list(cuts)
    notes = []
    dropped = set()
    for codec in low:
        _, note = for_codec(split_model(model, inner[len(inner) // 2]), codec, sample, threads)
        if note:
            dropped.add(codec)
            notes.append(note.replace(f" at cut {inner[len(inner) // 2].id}", " at every cut"))
    return tuple(c for c in codecs if c not in dropped), notes


def _layout(
    model: onnx.ModelProto,
    inputs: InputSet,
    cut_ids: Sequence[str] | None,
    codecs: Sequence[str],
    role: str,
    *,
    fallback: onnx.ModelProto | None,
    threads: int | None,
    quantize: str | None,
) -> tuple[_Layout, list[str]]:
    view = GraphView(model, inputs.first)
    cuts = view.cuts() if not cut_ids else [view.find(c) for c in cut_ids]
    usable, notes = _usable_codecs(model, cuts, codecs, inputs.first, threads)
    cut_codecs: dict[str, tuple[str, ...]] = {}
    for cut in cuts:
        cut_codecs[cut.id], note = applicable_codecs(cut, usable)
        notes.extend([note] if note else [])
    segments, reach = chain_segments(view, cuts, to_outputs=True)
    for cut in cuts:
        chained = set().union(*(s.nodes for s in segments[: reach[cut.id]]))
        if chained != view.head_nodes_for(cut.names):
            notes.append(
                f"cut {cut.id}: its head is not a prefix of the chain through the other cuts (a cut given by "
                "tensor names off the enumeration): its head time counts nodes it does not run"
            )
    layout = _Layout(
        model=model,
        view=view,
        cuts=cuts,
        cut_codecs=cut_codecs,
        segments=segments,
        reach=reach,
        heads=role in ("device", "both"),
        tails=role in ("server", "both"),
        checks=_checked_cuts(cuts, reach, _CHECKED_CUTS),
        fallback=fallback is not None,
    )
    if quantize and layout.heads:
        layout.int8_segments = [has_weights(segment_model(view, segment)) for segment in segments]
        layout.int8_fallback = fallback is not None and has_weights(fallback)
    return layout, notes


# --- one pass ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Passthrough:
    cut: Cut
    head: onnx.ModelProto
    tail: onnx.ModelProto


def _codec_ops(cut: Cut, codec: str, model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The codec's own ops at ``cut`` as two small models, encode (cut tensors -> wire) and decode (wire ->
    cut tensors): :func:`~splitinf.offline.codecs.encode` applied to a head and a tail that only pass the
    float tensors through (fp32: all of them, unchanged). The 8-bit scale is a placeholder: the ops take as
    long whatever its value."""
    from dataclasses import replace

    floats = tuple(t for t in cut.tensors if t.dtype == "float32" or codec == "fp32")
    opset = max([CODEC_OPSET.get(codec, 1), *(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))])

    def passthrough() -> onnx.ModelProto:
        values = [spec_value_info(t) for t in floats]
        made = onnx.helper.make_model(
            onnx.helper.make_graph([], "codec", values, values), opset_imports=[onnx.helper.make_opsetid("", opset)]
        )
        made.ir_version = model.ir_version
        return made

    quant = {t.name: QuantParams(1.0, 0) for t in floats} if codec in QUANTIZED else None
    encoded = encode(_Passthrough(replace(cut, tensors=floats), passthrough(), passthrough()), codec, quant)
    return encoded.head, encoded.tail


@dataclass
class _Pass:
    """One sweep over the parts: runs the chain on the inputs, times what the journal lacks."""

    layout: _Layout
    journal: _Journal
    bar: ProgressBar
    index: int
    threads: int | None
    repeats: int
    warmup: int
    on_part: Callable[[str], None] | None
    model_file: str | None = None
    providers: list[str] = field(default_factory=list)
    pause_s: float = 0.0

    def session(self, model: onnx.ModelProto | bytes | str) -> ort.InferenceSession:
        """A session with ``threads`` and the server's settings on the server (its tails, as ``splitinf serve``
        runs them), else the device runtime's."""
        settings = SERVING_SETTINGS if self.layout.tails and not self.layout.heads else SessionSettings()
        return make_session(model, self.threads, settings)

    def pending(self, key: Sequence[str]) -> bool:
        return _part_name(self.index, key) not in self.journal.done

    def time(self, key: Sequence[str], fn: Callable[[], object]) -> None:
        if not self.pending(key):
            return
        part = _part_name(self.index, key)
        timing = time_callable(fn, repeats=self.repeats, warmup=self.warmup, pause_s=self.pause_s)
        self.journal.record(part, timing)
        self.bar.step(" ".join(key))
        if self.on_part is not None:
            self.on_part(part)

    def full_model(self, sample: Mapping[str, np.ndarray]) -> None:
        if not self.pending(("model",)):
            return
        # from the file when there is one: no serialised copy of the whole model beside ours
        full = self.session(self.model_file or self.layout.model)
        self.providers = full.get_providers()
        inputs_.run_checked(full, sample)  # an input the model rejects is a one-line InputError, not a traceback
        self.time(("model",), partial(full.run, None, sample))

    def cut(self, cut: Cut, values: Mapping[str, np.ndarray]) -> None:
        """The codec ops and (de)serialisation at ``cut``; records each codec's wire bytes."""
        layout = self.layout
        tensors = {name: values[name] for name in cut.names}
        for codec in layout.cut_codecs[cut.id]:
            wire = dict(tensors)
            if layout.encodes(cut, codec):
                encoder, decoder = (self.session(m) for m in _codec_ops(cut, codec, layout.model))
                feed = {i.name: tensors[i.name] for i in encoder.get_inputs()}
                coded = inputs_.run_checked(encoder, feed, f"codec {codec}")
                for name in feed:
                    del wire[name]
                wire.update(zip([o.name for o in encoder.get_outputs()], coded, strict=True))
                if layout.heads:
                    self.time((cut.id, codec, "encode"), partial(encoder.run, None, feed))
                if layout.tails and codec != "fp32":
                    coded_feed = {i.name: wire[i.name] for i in decoder.get_inputs()}
                    self.time((cut.id, codec, "decode"), partial(decoder.run, None, coded_feed))
            layout.wire_bytes[(cut.id, codec)] = int(sum(np.asarray(v).nbytes for v in wire.values()))
            if layout.heads:
                self.time((cut.id, codec, "serialize"), partial(_serialize, wire))
            if layout.tails:
                self.time((cut.id, codec, "deserialize"), partial(_deserialize, _serialize(wire)))

    def chain(self, sample: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Run the segments in order on ``sample``, timing each and the parts at each cut as its tensors
        appear; return the checked cuts' tensors (for the whole tails)."""
        layout = self.layout
        last_use = last_uses(layout.segments[: layout.segments_run], layout.cuts, layout.reach)
        values = dict(sample)
        kept: dict[str, dict[str, np.ndarray]] = {}
        at_reach: dict[int, list[Cut]] = {}
        for cut in layout.cuts:
            at_reach.setdefault(layout.reach[cut.id], []).append(cut)
        checked = {c.id for c in layout.checks}
        for index in range(-1, layout.segments_run):
            if index >= 0:
                self.segment(index, values)
            for cut in at_reach.get(index + 1, ()):
                self.cut(cut, values)
                if cut.id in checked:
                    kept[cut.id] = {n: values[n] for n in cut.names}
            for name in [n for n in values if last_use.get(n, -1) <= index]:
                del values[name]
        return kept

    def segment(self, index: int, values: dict[str, np.ndarray]) -> None:
        layout = self.layout
        session = self.session(segment_model(layout.view, layout.segments[index]))
        feed = {i.name: values[i.name] for i in session.get_inputs()}
        names = [o.name for o in session.get_outputs()]
        values.update(zip(names, inputs_.run_checked(session, feed, f"segment {index + 1}"), strict=True))
        if layout.segment_timed(index):
            self.time(("segment", str(index)), partial(session.run, None, feed))
        if layout.int8_segments[index : index + 1] == [True] and self.pending(("segment", str(index), "int8")):
            del session
            # calibrated on this one input: the int8 kernels take as long whatever the scales
            method = quantize_method(layout.model)  # the whole head's choice, not each segment's own
            int8 = quantize_model(segment_model(layout.view, layout.segments[index]), [feed], method=method)
            session = self.session(int8.model)
            self.time(("segment", str(index), "int8"), partial(session.run, None, feed))

    def checks(self, sample: Mapping[str, np.ndarray], kept: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Whole heads (their int8 twins) and tails at the checked cuts, timed as they were before segments."""
        layout = self.layout
        for cut in layout.checks:
            wanted = [k for k in self.layout.keys() if k[:2] == ("check", cut.id) and self.pending(k)]
            if not wanted:
                continue
            partition = split_model(layout.model, cut)
            parts = {}
            for _, _, part in wanted:
                if part == "int8_head":
                    int8 = quantize_model(partition.head, [sample], method=quantize_method(layout.model))
                    parts[part] = int8.model.SerializeToString()
                else:
                    parts[part] = getattr(partition, part).SerializeToString()
            del partition  # one serialised part at a time beside the source model, not whole partitions
            for part in list(parts):
                session = self.session(parts.pop(part))
                values = kept.get(cut.id, {}) if part == "tail" else sample
                feed = {i.name: values[i.name] for i in session.get_inputs()}
                self.time(("check", cut.id, part), partial(session.run, None, feed))
                del session

    def fallback(self, small: onnx.ModelProto, inputs: InputSet, seed: int) -> None:
        if self.layout.heads and self.pending(("fallback",)):
            session = self.session(small)
            self.time(("fallback",), partial(session.run, None, _fallback_feeds(session, inputs, seed)))
        if self.layout.int8_fallback and self.pending(("fallback", "int8")):
            session = self.session(small)
            feeds = _fallback_feeds(session, inputs, seed)
            session = self.session(quantize_model(small, [feeds]).model)
            self.time(("fallback", "int8"), partial(session.run, None, feeds))


# --- the profile -----------------------------------------------------------------------------------


def _journal_key(
    layout: _Layout,
    sha256: str,
    inputs: InputSet,
    settings: Mapping[str, Any],
    fallback: str | None,
    threads: int | None,
) -> dict[str, Any]:
    """What the parts were measured on: a journal with another key is not resumed."""
    digest = hashlib.sha256()
    for name, value in sorted(inputs.first.items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return {
        "model_sha256": sha256,
        "role": "both" if layout.heads and layout.tails else ("device" if layout.heads else "server"),
        "threads": threads or 0,
        "onnxruntime": ort.__version__,
        "settings": dict(settings),
        "cuts": [c.id for c in layout.cuts],
        "inputs": inputs.to_json(),
        "inputs_sha256": digest.hexdigest(),
        "fallback_sha256": fallback,
    }


def _scaled(timing: Timing, ratio: float) -> Timing:
    return Timing(timing.median * ratio, timing.p90 * ratio, timing.min * ratio, timing.repeats)


def _ratio_at(anchors: Sequence[tuple[int, float]], index: int) -> float:
    """The whole/summed ratio at chain position ``index``: linear between the anchors, flat beyond them."""
    if not anchors:
        return 1.0
    ordered = sorted(anchors)
    return float(np.interp(index, [k for k, _ in ordered], [r for _, r in ordered]))


@dataclass
class _Results:
    """The profile's figures from the journal: each part's quietest pass; heads and tails as sums of
    segments, scaled by how the whole parts timed compare with the sums (see :meth:`anchors`)."""

    layout: _Layout
    journal: _Journal
    passes: int
    repeats: int

    def best(self, *key: str) -> Timing:
        return _quietest([self.journal.done[_part_name(p, key)] for p in range(self.passes)])

    def segment(self, index: int, part: str = "head") -> Timing:
        """A segment's time; for ``int8_head`` its int8 twin's where it has weights to quantize."""
        if part == "int8_head" and self.layout.int8_segments[index : index + 1] == [True]:
            return self.best("segment", str(index), "int8")
        return self.best("segment", str(index))

    def summed(self, part: str, reach: int) -> Timing:
        """The raw sum of the segments before (head, int8_head) or after (tail) chain position ``reach``."""
        indices = range(reach, len(self.layout.segments)) if part == "tail" else range(reach)
        return Timing.total([self.segment(k, part) for k in indices], self.repeats)

    def timed(self, *key: str) -> bool:
        return _part_name(0, key) in self.journal.done

    def anchors(self, part: str) -> list[tuple[int, float]]:
        """(chain position, whole/summed) where a whole part was timed: the checked cuts, and the full model
        (the head after every segment, the tail from the input). Of the fastest runs: the ratio is the graph's
        (run overheads, fusions), and a long run is likelier than a short one to be slowed by other load."""
        layout = self.layout
        found = []
        for cut in [c for c in layout.checks if self.timed("check", c.id, part)]:
            summed = self.summed(part, layout.reach[cut.id]).min
            if summed > 0:
                found.append((layout.reach[cut.id], self.best("check", cut.id, part).min / summed))
        ends = {"head": len(layout.segments), "tail": 0}
        if part in ends and self.timed("model") and all(layout.segment_timed(k) for k in range(len(layout.segments))):
            found.append((ends[part], self.best("model").min / self.summed(part, ends[part]).min))
        return found

    def wholes(self, part: str) -> dict[int, Timing]:
        """Per chain position, the part's own timing where it was timed whole: the checked cuts, a head or
        tail of one segment (that segment alone is the part), and the full model (the head after every
        segment, the tail from the input). There a scaled sum would only add the anchors' noise."""
        layout, last = self.layout, len(self.layout.segments)
        found = {
            layout.reach[c.id]: self.best("check", c.id, part) for c in layout.checks if self.timed("check", c.id, part)
        }
        reach, index = (last - 1, last - 1) if part == "tail" else (1, 0)
        key: tuple[str, ...] = ("segment", str(index))
        if part == "int8_head" and layout.int8_segments[index : index + 1] == [True]:
            key = ("segment", str(index), "int8")
        if 0 < reach < last and self.timed(*key):
            found.setdefault(reach, self.best(*key))
        whole_model = {"head": last, "tail": 0}
        if part in whole_model and self.timed("model"):
            found.setdefault(whole_model[part], self.best("model"))
        return found

    def head(self, cut: Cut, part: str = "head") -> Timing:
        return self.scaled(part)[self.layout.reach[cut.id]]

    def tail(self, cut: Cut) -> Timing:
        return self.scaled("tail")[self.layout.reach[cut.id]]

    def scaled(self, part: str) -> dict[int, Timing]:
        """Per chain position of a cut, the scaled sum for ``part``; never less than that of a head (tail) it
        contains, which noise between the anchors could otherwise give."""
        if part not in self._scaled:
            anchors, wholes = self.anchors(part), self.wholes(part)
            reaches = sorted({self.layout.reach[c.id] for c in self.layout.cuts}, reverse=part == "tail")
            if part == "int8_head":
                reaches = [r for r in reaches if any(self.layout.int8_segments[:r])]
            floor = Timing(0.0, 0.0, 0.0, self.repeats)
            table = {}
            for reach in reaches:
                timing = wholes.get(reach) or _scaled(self.summed(part, reach), _ratio_at(anchors, reach))
                floor = Timing(
                    max(timing.median, floor.median),
                    max(timing.p90, floor.p90),
                    max(timing.min, floor.min),
                    timing.repeats,
                )
                table[reach] = floor
            self._scaled[part] = table
        return self._scaled[part]

    def __post_init__(self) -> None:
        self._scaled: dict[str, dict[int, Timing]] = {}

    def codec_entry(self, cut: Cut, codec: str) -> dict[str, Any]:
        layout = self.layout
        entry: dict[str, Any] = {}
        if layout.heads:
            encode_ = [self.best(cut.id, codec, "encode")] if layout.encodes(cut, codec) else []
            entry["head"] = Timing.total([self.head(cut), *encode_], self.repeats).to_json()
            entry.update({"encode": encode_[0].to_json()} if encode_ else {})
            entry["serialize"] = self.best(cut.id, codec, "serialize").to_json()
            if layout.int8_head(cut):  # the int8 twin feeds the same codec op
                entry["int8_head"] = Timing.total([self.head(cut, "int8_head"), *encode_], self.repeats).to_json()
        if layout.tails:
            decode = [self.best(cut.id, codec, "decode")] if codec != "fp32" else []
            entry["tail"] = Timing.total([*decode, self.tail(cut)], self.repeats).to_json()
            entry.update({"decode": decode[0].to_json()} if decode else {})
            entry["deserialize"] = self.best(cut.id, codec, "deserialize").to_json()
        entry["wire_bytes"] = layout.wire_bytes[(cut.id, codec)]
        return entry

    def check(self) -> dict[str, Any]:
        """Each whole part against the raw sum of its segments (``error``) and against the scaled sum
        estimated without it, from the other anchors (``held_out_error``: the error to expect elsewhere)."""
        layout = self.layout
        parts: list[dict[str, Any]] = []
        for part in ("head", "int8_head", "tail"):
            anchors = self.anchors(part)
            for cut in [c for c in layout.checks if self.timed("check", c.id, part)]:
                reach = layout.reach[cut.id]
                whole, summed = self.best("check", cut.id, part).min, self.summed(part, reach).min
                others = [a for a in anchors if a[0] != reach]
                estimate = summed * _ratio_at(others, reach) if others else summed
                parts.append(
                    {
                        "cut": cut.id,
                        "part": part,
                        "whole": whole,
                        "summed": summed,
                        "error": summed / whole - 1.0 if whole > 0 else 0.0,
                        "held_out_error": estimate / whole - 1.0 if whole > 0 else 0.0,
                    }
                )
        return {
            "parts": parts,
            "max_abs_error": max((abs(float(p["error"])) for p in parts), default=0.0),
            "max_abs_held_out_error": max((abs(float(p["held_out_error"])) for p in parts), default=0.0),
        }

    def segments_json(self) -> list[dict[str, Any]]:
        return [
            {
                "end": segment.end,
                "nodes": len(segment.nodes),
                "seconds": self.segment(k).to_json() if self.layout.segment_timed(k) else None,
            }
            for k, segment in enumerate(self.layout.segments)
        ]


def profile_model(
    model: onnx.ModelProto,
    *,
    name: str,
    sha256: str,
    threads: int | None = None,
    cut_ids: Sequence[str] | None = None,
    codecs: Sequence[str] = ("fp32", "fp16", "int8"),
    repeats: int = 20,
    warmup: int = 3,
    passes: int = 2,
    fallback: tuple[onnx.ModelProto, str, str] | None = None,
    progress: bool = False,
    seed: int = 0,
    inputs: InputSet | None = None,
    role: str = "both",
    journal: str | os.PathLike[str] | None = None,
    on_part: Callable[[str], None] | None = None,
    stream: IO[str] | None = None,
    model_file: str | os.PathLike[str] | None = None,
    quantize: str | None = None,
    pause_s: float = 0.0,
) -> dict[str, Any]:
    """Time what ``role`` runs of the model at each cut per codec (and the fallback); return the profile.

    Everything runs on ``inputs`` (:func:`splitinf.offline.inputs.model_inputs`: the user's samples or
    shapes; default random, dynamic dimensions 1): the first set is timed and sizes the cuts; the
    profile records their shapes. A codec that does not apply at a cut (no float tensor) or to the
    model (an opset conversion that fails) is not timed there and gets a line in ``notes``. Everything
    is timed in ``passes`` separate sweeps; each part keeps its quietest pass. ``journal``: the file
    the parts are appended to as they are measured, and resumed from (see the module docstring);
    ``on_part`` is called with each part's name once it is recorded. ``model_file``: the file ``model`` was
    read from, which the full model's session then opens (sparing a serialised copy in memory).
    With ``quantize="int8"`` the device also times the int8 twin (:mod:`splitinf.offline.quantize`) of
    each segment with weights and of the fallback: ``int8_head`` per cut and codec (scaled by whole int8
    heads at the checked cuts), ``int8_seconds`` for the fallback. ``pause_s``: idle time before each
    timed run (see :func:`profile_file`).
    """
    if passes < 1:
        raise PlanError(f"passes must be at least 1, got {passes}")
    if role not in ROLES:
        raise PlanError(f"unknown role {role!r}; choose from {', '.join(ROLES)}")
    codecs = parse_codecs(codecs)
    if inputs is None:
        inputs = inputs_.model_inputs(GraphView(model).input_specs(), seed=seed)
    quantize = parse_quantize(quantize)
    small = None if fallback is None else fallback[0]
    layout, notes = _layout(model, inputs, cut_ids, codecs, role, fallback=small, threads=threads, quantize=quantize)
    settings = {"repeats": repeats, "warmup": warmup, "passes": passes, "codecs": list(codecs), "quantize": quantize}
    if pause_s > 0:
        settings["pause_s"] = pause_s
    key = _journal_key(layout, sha256, inputs, settings, fallback[2] if fallback else None, threads)
    parts = _Journal(None if journal is None else Path(journal), key)
    keys = layout.keys()
    todo = sum(_part_name(p, k) not in parts.done for p in range(passes) for k in keys)
    bar = ProgressBar(todo, enabled=progress, stream=stream)
    providers: list[str] = []
    for index in range(passes):
        sweep = _Pass(
            layout,
            parts,
            bar,
            index,
            threads,
            repeats,
            warmup,
            on_part,
            str(model_file) if model_file else None,
            pause_s=pause_s,
        )
        sweep.full_model(inputs.first)
        kept = sweep.chain(inputs.first)
        sweep.checks(inputs.first, kept)
        if fallback is not None:
            sweep.fallback(fallback[0], inputs, seed)
        providers = sweep.providers or providers
    results = _Results(layout, parts, passes, repeats)
    profile: dict[str, Any] = {
        "format": PROFILE_FORMAT,
        "kind": "splitinf-profile",
        "role": key["role"],
        "model": {"name": name, "sha256": sha256},
        "machine": machine_info(),
        "onnxruntime": {
            "version": ort.__version__,
            "providers": providers or ["CPUExecutionProvider"],
            "threads": threads or 0,
            "memory_arena": (SERVING_SETTINGS if key["role"] == "server" else SessionSettings()).memory_arena,
        },
        "settings": settings,
        "inputs": inputs.to_json(),
        "model_seconds": results.best("model").to_json(),
        "segments": results.segments_json(),
        "check": results.check(),
        "cuts": [
            {
                "id": cut.id,
                "bytes": int(cut.bytes_per_sample),
                "codecs": {codec: results.codec_entry(cut, codec) for codec in layout.cut_codecs[cut.id]},
            }
            for cut in layout.cuts
        ],
        "notes": notes,
        "resumed_parts": parts.resumed,
    }
    if fallback is not None and layout.heads:
        profile["fallback"] = {
            "name": fallback[1],
            "sha256": fallback[2],
            "seconds": results.best("fallback").to_json(),
        }
        if layout.int8_fallback:
            profile["fallback"]["int8_seconds"] = results.best("fallback", "int8").to_json()
    return profile


def profile_file(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    threads: int | None = 1,
    cut_ids: Sequence[str] | None = None,
    codecs: str | Sequence[str] = ("fp32", "fp16", "int8"),
    repeats: int = 20,
    warmup: int = 3,
    passes: int = 2,
    fallback: str | os.PathLike[str] | None = None,
    progress: bool = False,
    samples: str | os.PathLike[str] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    role: str = "both",
    on_part: Callable[[str], None] | None = None,
    quantize: str | None = None,
    pause_s: float = 0.0,
) -> dict[str, Any]:
    """Profile the model file (and the fallback file) on ``samples`` (a path) or at ``shapes`` and
    write the profile JSON; the file wrapper. Parts are kept in :func:`journal_path` as they are
    measured, resumed from there, and the journal removed once the profile is written.

    ``pause_s`` idles before each timed run. A device whose speed depends on what it just did (a CPU
    quota that refills each period, a power or thermal budget) runs a request that comes after idle
    time faster than back-to-back runs: set it to the gap between the device's requests (at least a
    quota period) so the profile times the regime the device answers in."""
    if (threads is not None and threads < 0) or repeats < 1 or warmup < 0 or pause_s < 0:
        raise PlanError("threads must be >= 0, repeats >= 1, warmup >= 0 and the pause >= 0")
    target = Path(output)
    if not target.parent.is_dir():
        raise PlanError(f"the directory of {target} does not exist; create it or choose another output")
    small = None
    if fallback is not None:
        small = (load_model(fallback), Path(fallback).stem, sha256_file(fallback))
    full = load_model(model)
    inputs = inputs_.model_inputs(GraphView(full).input_specs(), samples=samples, shapes=shapes)
    profile = profile_model(
        full,
        name=Path(model).stem,
        sha256=sha256_file(model),
        threads=threads,
        cut_ids=cut_ids,
        codecs=codecs,
        repeats=repeats,
        warmup=warmup,
        passes=passes,
        fallback=small,
        progress=progress,
        inputs=inputs,
        role=role,
        journal=journal_path(target),
        on_part=on_part,
        model_file=model,
        quantize=quantize,
        pause_s=pause_s,
    )
    write_json_atomic(target, profile)
    journal_path(target).unlink(missing_ok=True)
    return profile


def check_role(profile: Mapping[str, Any], *, role: str, source: str) -> None:
    """Refuse a profile measured for the other side (``--role server`` given as the device's, or the reverse)."""
    found = str(profile.get("role", "both"))
    if found not in ("both", role):
        times = "tails" if found == "server" else "heads"
        raise PlanError(
            f"the {role} profile {source} was measured with --role {found} (it times only the {times}); "
            f"give it as --{found}, and give as --{role} a profile from `splitinf profile MODEL --role {role}` "
            f"on the {role}"
        )


def load_profile(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a profile written by ``splitinf profile``; a PlanError names what is wrong."""
    file = Path(path)
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError as exc:
        raise PlanError(f"profile {file} does not exist; write it with `splitinf profile MODEL -o {file}`") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"profile {file} is not readable JSON ({exc}); re-run `splitinf profile`") from exc
    if not isinstance(data, dict) or data.get("kind") != "splitinf-profile":
        raise PlanError(f"{file} is not a splitinf profile; write one with `splitinf profile`")
    if data.get("format") not in _READABLE_FORMATS:
        raise PlanError(f"profile {file} has format {data.get('format')!r}, expected {PROFILE_FORMAT}; re-profile")
    if data.get("role", "both") not in ROLES:
        raise PlanError(f"profile {file} has role {data.get('role')!r}, not one of {', '.join(ROLES)}; re-profile")
    for key in ("model", "cuts", "model_seconds"):
        if key not in data:
            raise PlanError(f"profile {file} lacks {key!r}; re-run `splitinf profile`")
    return data
