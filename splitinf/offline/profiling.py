"""Measure how long a model's heads and tails take on this machine, and write a profile.

``splitinf profile`` runs this on each machine (the device for the heads, the server for the
tails). Each candidate head and tail is timed alone, one request at a time, in its own
onnxruntime session with splitinf's default settings and ``threads`` intra-op threads
(:mod:`splitinf.ort`): exactly how the device runtime runs a head when its ``intra_op_threads``
equals ``threads``. The tail server runs tails with its own settings (thread counts, graph
optimization, providers), may batch requests and serves several devices at once: give
``threads`` the server's intra-op thread count, and read a tail's time as one request's on an
idle server (the server reports its real compute time in each response).

Each item gets warm-up runs, then repeats summarised by median and p90, in two or more separate
passes over everything; it keeps its quietest pass (other load comes in bursts). Heads are timed
with their codec applied (the Cast/QuantizeLinear is part of the head), tails likewise.
``serialize`` is the client's work to build and serialise the V2 request, ``deserialize`` the
server's to parse it.

Profile JSON (format 1)::

    {"format": 1, "kind": "splitinf-profile",
     "model": {"name": "m", "sha256": "..."},
     "machine": {"platform": ..., "cpu_count": 4, "cpu_model": ...},
     "onnxruntime": {"version": "1.31.0", "providers": ["CPUExecutionProvider"], "threads": 4},
     "settings": {"repeats": 20, "warmup": 3, "passes": 2, "codecs": ["fp32", "fp16", "int8"]},
     "inputs": {"source": "samples", "inputs": {"x": {"dtype": "float32", "shape": [1, 3, 320, 448]}}},
     "model_seconds": {"median": ..., "p90": ..., "min": ..., "repeats": 20},
     "cuts": [{"id": "c3", "bytes": 2048,
               "codecs": {"fp16": {"head": <timing>, "tail": <timing>, "serialize": <timing>,
                                   "deserialize": <timing>, "wire_bytes": 1024,
                                   "int8_head": <timing>}}}, ...],   (with quantize="int8")
     "notes": ["cut ids: no codec fp16/int8, its int64 tensors travel as they are (fp32)"],
     "fallback": {"name": "small", "sha256": "...", "seconds": <timing>, "int8_seconds": <timing>}}

``inputs`` are the shapes everything was timed at (the user's samples or ``--shape``, else random
inputs with dynamic dimensions 1: ``source`` says which); a cut lists only the codecs that apply
there, and ``notes`` says why one is missing.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnx
import onnxruntime as ort

from splitinf.contract.files import sha256_file, write_json_atomic
from splitinf.contract.stats import quantile
from splitinf.errors import PlanError
from splitinf.offline import inputs as inputs_
from splitinf.offline.codecs import (
    QUANTIZED,
    PartitionLike,
    applicable_codecs,
    calibrate,
    encode,
    for_codec,
    parse_codecs,
)
from splitinf.offline.graph import GraphView, load_model
from splitinf.offline.inputs import InputSet
from splitinf.offline.partition import split_model
from splitinf.offline.quantize import has_weights, parse_quantize, quantize_model, quantized_partition
from splitinf.offline.sessions import make_session

__all__ = [
    "PROFILE_FORMAT",
    "ProgressBar",
    "Timing",
    "load_profile",
    "machine_info",
    "profile_file",
    "profile_model",
    "time_callable",
]

PROFILE_FORMAT = 1


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


def time_callable(
    fn: Callable[[], object], *, repeats: int, warmup: int, clock: Callable[[], float] = time.perf_counter
) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed."""
    if repeats < 1:
        raise PlanError(f"--repeats must be at least 1, got {repeats}")
    for _ in range(max(warmup, 0)):
        fn()
    seconds = []
    for _ in range(repeats):
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
    """A one-line progress bar on a stream (stderr) with the time taken and an ETA (the mean step time so
    far times the steps left); silent when not enabled."""

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
        self.started = clock()

    def eta_s(self) -> float:
        """Seconds left at the mean pace so far."""
        if self.done == 0:
            return 0.0
        return (self.clock() - self.started) / self.done * max(self.total - self.done, 0)

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        filled = self.width * min(self.done, self.total) // self.total
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = _clock_text(self.clock() - self.started)
        timing = (
            f"{elapsed} elapsed" if self.done >= self.total else f"{elapsed} elapsed, ETA {_clock_text(self.eta_s())}"
        )
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
    quantize: str | None = None,
) -> dict[str, Any]:
    """Time the full model, each cut's head and tail per codec (and the fallback); return the profile.

    Everything runs on ``inputs`` (:func:`splitinf.offline.inputs.model_inputs`: the user's samples or
    shapes; default random, dynamic dimensions 1): the first set is timed and sizes the cuts, up to 8
    calibrate the 8-bit codecs; the profile records their shapes. A codec that does not apply at a
    cut (no float tensor, an opset conversion that fails) is not timed there and gets a line in
    ``notes``. Everything is timed in ``passes`` separate sweeps; each item keeps its quietest pass.
    With ``quantize="int8"`` each head with weights (and the fallback) is also timed as its int8
    variant (:mod:`splitinf.offline.quantize`), with the same codec, as ``int8_head`` (``int8_seconds``).
    """
    if passes < 1:
        raise PlanError(f"passes must be at least 1, got {passes}")
    quantize = parse_quantize(quantize)
    codecs = parse_codecs(codecs)
    if inputs is None:
        inputs = inputs_.model_inputs(GraphView(model).input_specs(), seed=seed)
    sample = inputs.first
    view = GraphView(model, sample)
    cuts = view.cuts() if not cut_ids else [view.find(c) for c in cut_ids]
    cut_codecs: dict[str, tuple[str, ...]] = {}
    notes: list[str] = []
    for cut in cuts:
        cut_codecs[cut.id], note = applicable_codecs(cut, codecs)
        notes.extend([note] if note else [])
    bar = ProgressBar(passes * (1 + sum(map(len, cut_codecs.values())) + (1 if fallback else 0)), enabled=progress)
    timings: dict[tuple[str, ...], list[Timing]] = {}
    wire_bytes: dict[tuple[str, str], int] = {}

    def timed(key: tuple[str, ...], fn: Callable[[], object]) -> None:
        timings.setdefault(key, []).append(time_callable(fn, repeats=repeats, warmup=warmup))

    providers: list[str] = []
    for _ in range(passes):
        full = make_session(model, threads)
        providers = full.get_providers()
        inputs_.run_checked(full, sample)  # an input the model rejects is a one-line InputError, not a traceback
        timed(("model",), partial(full.run, None, sample))
        del full
        bar.step("full model")
        for cut in cuts:
            partition = split_model(model, cut)
            # Timing does not depend on the scales' values, so one sample calibrates well enough here.
            int8 = quantized_partition(partition, [sample]) if quantize else None
            for codec in cut_codecs[cut.id]:
                bar.step(f"cut {cut.id} {codec}")
                ready, note = for_codec(partition, codec, sample, threads)
                if ready is None:
                    notes.extend([note] if note and note not in notes else [])
                    continue
                key = (cut.id, codec)
                timed_part = partial(lambda k, part, fn: timed((*k, part), fn), key)
                wire_bytes[key] = _time_parts(ready, codec, inputs, threads, timed_part, int8[0] if int8 else None)
        if fallback is not None:
            small = make_session(fallback[0], threads)
            small_sample = _fallback_feeds(small, inputs, seed)
            timed(("fallback",), partial(small.run, None, small_sample))
            if quantize and has_weights(fallback[0]):
                small = make_session(quantize_model(fallback[0], [small_sample]).model, threads)
                timed(("fallback", "int8"), partial(small.run, None, small_sample))
            bar.step("fallback")

    def best(*key: str) -> dict[str, Any]:
        return _quietest(timings[key]).to_json()

    profile: dict[str, Any] = {
        "format": PROFILE_FORMAT,
        "kind": "splitinf-profile",
        "model": {"name": name, "sha256": sha256},
        "machine": machine_info(),
        "onnxruntime": {"version": ort.__version__, "providers": providers, "threads": threads or 0},
        "settings": {
            "repeats": repeats,
            "warmup": warmup,
            "passes": passes,
            "codecs": list(codecs),
            "quantize": quantize,
        },
        "inputs": inputs.to_json(),
        "model_seconds": best("model"),
        "cuts": [
            {
                "id": cut.id,
                "bytes": int(cut.bytes_per_sample),
                "codecs": {
                    codec: {
                        "head": best(cut.id, codec, "head"),
                        "tail": best(cut.id, codec, "tail"),
                        "serialize": best(cut.id, codec, "serialize"),
                        "deserialize": best(cut.id, codec, "deserialize"),
                        "wire_bytes": wire_bytes[(cut.id, codec)],
                    }
                    | (
                        {"int8_head": best(cut.id, codec, "int8_head")}
                        if (cut.id, codec, "int8_head") in timings
                        else {}
                    )
                    for codec in cut_codecs[cut.id]
                    if (cut.id, codec) in wire_bytes
                },
            }
            for cut in cuts
        ],
        "notes": notes,
    }
    if fallback is not None:
        profile["fallback"] = {"name": fallback[1], "sha256": fallback[2], "seconds": best("fallback")}
        if ("fallback", "int8") in timings:
            profile["fallback"]["int8_seconds"] = best("fallback", "int8")
    return profile


def _time_parts(
    partition: PartitionLike,
    codec: str,
    inputs: InputSet,
    threads: int | None,
    timed: Callable[[str, Callable[[], object]], None],
    int8_partition: PartitionLike | None = None,
) -> int:
    """Time one cut's head, tail, serialisation and parsing with ``codec`` (and the int8 head of
    ``int8_partition`` with the same codec and scales, when given); return the wire bytes."""
    # Timing does not depend on the scale's exact value: a few samples calibrate well enough here.
    quant = calibrate(partition, inputs.samples[:8], codec, threads) if codec in QUANTIZED else None
    encoded = encode(partition, codec, quant)
    head = make_session(encoded.head, threads)
    tail = make_session(encoded.tail, threads)
    head_feed = {i.name: inputs.first[i.name] for i in head.get_inputs()}
    head_names = [o.name for o in head.get_outputs()]
    wire = dict(zip(head_names, inputs_.run_checked(head, head_feed, "the head"), strict=True))
    tail_feed = {i.name: wire[i.name] for i in tail.get_inputs()}
    timed("head", partial(head.run, None, head_feed))
    if int8_partition is not None:
        int8_head = make_session(encode(int8_partition, codec, quant).head, threads)
        timed("int8_head", partial(int8_head.run, None, head_feed))
        del int8_head
    timed("tail", partial(tail.run, None, tail_feed))
    timed("serialize", partial(_serialize, wire))
    timed("deserialize", partial(_deserialize, _serialize(wire)))
    return int(sum(np.asarray(v).nbytes for v in wire.values()))


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
    quantize: str | None = None,
) -> dict[str, Any]:
    """Profile the model file (and the fallback file) on ``samples`` (a path) or at ``shapes`` and
    write the profile JSON; the file wrapper."""
    if (threads is not None and threads < 0) or repeats < 1 or warmup < 0:
        raise PlanError("threads must be >= 0, repeats >= 1 and warmup >= 0")
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
        quantize=quantize,
    )
    write_json_atomic(target, profile)
    return profile


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
    if data.get("format") != PROFILE_FORMAT:
        raise PlanError(f"profile {file} has format {data.get('format')!r}, expected {PROFILE_FORMAT}; re-profile")
    for key in ("model", "cuts", "model_seconds"):
        if key not in data:
            raise PlanError(f"profile {file} lacks {key!r}; re-run `splitinf profile`")
    return data
