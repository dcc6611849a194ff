"""The planner: which split options a device holds, written as a plan directory.

Every option is priced by :func:`splitinf.contract.plan.expected_latency` (head on the device +
serialisation + bytes / bandwidth + round trip + tail on the server; a local model costs its run
time). Cuts are evaluated exhaustively: every enumerated cut the profiles timed, with every codec,
as whole head and tail sessions (onnxruntime fuses nodes, so per-node costs would mislead).

The options held are the ones fastest somewhere on a grid of bandwidths and round-trip times,
capped at a small number (:func:`select_candidates`). Full offload ("send the input") is always
weighed and its best codec variants always held, so the plan matches or beats it at every grid
point. Which held option answers a request is not decided here: the device applies
:func:`splitinf.contract.plan.choose_option` to its live estimates, and the report marks what that
rule picks within the plan's budget.

Cuts whose head exceeds ``--max-device-share`` of the model are not weighed. The device holds each
weight once: the plan directory holds the model cut into segments at the held cuts, and each fp32
option's head is a list of segment files plus its codec's own graph (:mod:`splitinf.offline.segments`).

With ``--quantize int8`` every head with weights also gets an int8 variant, priced by the device
profile's ``int8_head`` timings: an option of its own (``split:CUT:CODEC:int8head``) under the same
accuracy floor and the same rule, sharing its fp32 twin's tail and codec graph. Its head is a chain
too: the int8 twins of the segments between all the cuts weighed (:class:`~splitinf.offline.quantize.Int8Chain`,
the same segments whichever heads are held; one without weights stays fp32), then the codec graph.
Its fidelity and accuracy are measured on that chain, and the segments are written as measured
(``device/segments-int8/``), each once and only as deep as the deepest int8 head held; an fp32
segment is written only when an fp32 option or the local model needs it. The fallback gets an int8
variant too (quantized whole); one fallback is held (:func:`_choose_fallback`).

The pure core comes first. :func:`plan_model` at the end is the I/O wrapper that ``splitinf plan``
runs, in named steps: read the sources and samples, evaluate every (cut, codec) option (one cut's
models in memory at a time, a progress bar with an ETA on request), select the ones to hold, write
the plan directory.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from splitinf.contract.files import sha256_file, staged_directory, write_json_atomic
from splitinf.contract.manifest import build_manifest
from splitinf.contract.plan import (
    DEFAULT_BUDGET_S,
    DEFAULT_MAX_ACCURACY_DROP,
    Option,
    Plan,
    content_addressed_name,
    expected_latency,
    load_plan,
)
from splitinf.contract.samples import read_samples
from splitinf.contract.tensors import TensorSpec
from splitinf.errors import CutError, PlanError
from splitinf.offline.inputs import InputSet, inputs_for_plan
from splitinf.offline.sessions import make_session
from splitinf.ort import Chain

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from splitinf.offline.codecs import Encoded, QuantParams
    from splitinf.offline.device_share import DeviceShare
    from splitinf.offline.graph import GraphView
    from splitinf.offline.quantize import Int8Chain, QuantizedChain
    from splitinf.offline.segments import ChainFiles

__all__ = [
    "DEFAULT_BANDWIDTHS_BPS",
    "DEFAULT_RTTS_S",
    "best_option",
    "check_profile",
    "io_specs",
    "log_grid",
    "option_names",
    "plan_model",
    "profile_cut_codec",
    "profiled_cut_ids",
    "profile_skips",
    "select_candidates",
]

log = logging.getLogger(__name__)


def log_grid(low: float, high: float, points: int) -> tuple[float, ...]:
    """``points`` values from ``low`` to ``high`` spaced evenly on a log scale."""
    if low <= 0 or high < low or points < 1:
        raise PlanError(f"a grid needs 0 < low <= high and at least one point, got {low}, {high}, {points}")
    if points == 1:
        return (low,)
    ratio = (high / low) ** (1.0 / (points - 1))
    return tuple(low * ratio**i for i in range(points - 1)) + (high,)


DEFAULT_BANDWIDTHS_BPS = log_grid(0.25e6, 1000e6, 13)
DEFAULT_RTTS_S = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)


def option_names(model_name: str, cut_id: str, codec: str, precision: str = "fp32") -> tuple[str, str, str]:
    """(option id, path of its codec graph, tail model name) for a split option.

    The head is the chain's segments up to the cut, then the codec's graph. An int8 head's option id
    ends in ``int8head``; its codec graph and tail are the fp32 head's (the same models, as the tail
    stays fp32 and the wire the same), so the two share them. The plan written names the tail after its
    content too (``content_addressed_name``).
    """
    safe_cut = re.sub(r"[^A-Za-z0-9_.-]", "_", cut_id)
    safe_model = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)
    suffix = "" if precision == "fp32" else f":{precision}head"
    return (
        f"split:{cut_id}:{codec}{suffix}",
        f"device/codecs/{safe_cut}-{codec}.onnx",
        f"{safe_model}.{safe_cut}.{codec}",
    )


def best_option(options: Sequence[Option], bandwidth_bps: float, rtt_s: float) -> Option:
    """The option with the least expected latency (ties go to the earlier): what candidate selection ranks by."""
    if not options:
        raise PlanError("there are no options to choose from")
    return min(options, key=lambda o: expected_latency(o, bandwidth_bps, rtt_s))


def select_candidates(
    split_options: Sequence[Option],
    *,
    full_offload: Collection[str],
    local: Option | None = None,
    bandwidths_bps: Sequence[float] = DEFAULT_BANDWIDTHS_BPS,
    rtts_s: Sequence[float] = DEFAULT_RTTS_S,
    max_candidates: int = 4,
    min_accuracy: float | None = None,
) -> list[Option]:
    """The split options worth holding on the device.

    ``full_offload`` names the options whose cut is the graph inputs. Options whose accuracy is
    below ``min_accuracy`` are dropped. The full-offload options that are best among full-offload
    options somewhere on the grid are always kept (so the plan matches or beats sending the input);
    at most ``max_candidates`` other cuts are added: those best somewhere on the grid, chosen
    greedily by how much they lower the summed log latency over the grid when there are too many.
    """
    if max_candidates < 0:
        raise PlanError(f"--max-candidates must be >= 0, got {max_candidates}")
    grid = [(bw, rtt) for bw in bandwidths_bps for rtt in rtts_s]
    eligible = [o for o in split_options if min_accuracy is None or o.accuracy is None or o.accuracy >= min_accuracy]
    offload = [o for o in eligible if o.id in full_offload]
    if not offload:
        raise PlanError(
            "no full-offload option is eligible (the input cut is missing from the profiles, or every codec "
            "for it is below the accuracy floor); profile the input cut and keep codec fp32"
        )
    kept = list(dict.fromkeys(best_option(offload, bw, rtt).id for bw, rtt in grid))
    chosen = [o for o in offload if o.id in kept]
    base = chosen + ([local] if local is not None else [])
    others = [o for o in eligible if o.id not in full_offload]
    winners_ids = dict.fromkeys(best_option(base + others, bw, rtt).id for bw, rtt in grid)
    winners = [o for o in others if o.id in winners_ids]

    def score(held: Sequence[Option]) -> float:
        return sum(math.log(expected_latency(best_option(held, bw, rtt), bw, rtt) + 1e-12) for bw, rtt in grid)

    extra: list[Option] = []
    while winners and len(extra) < max_candidates:
        current = base + extra
        pick = min(winners, key=lambda o: score(current + [o]))
        extra.append(pick)
        winners.remove(pick)
    order = {o.id: i for i, o in enumerate(split_options)}
    return sorted(chosen + extra, key=lambda o: order[o.id])


# --- profiles ----------------------------------------------------------------------------------


def check_profile(profile: Mapping[str, Any], *, role: str, model_sha256: str, source: str) -> None:
    """Refuse a profile of another model (sha256 mismatch), naming both hashes and the fix, or of the other side."""
    from splitinf.offline.profiling import check_role

    check_role(profile, role=role, source=source)
    found = str(profile.get("model", {}).get("sha256", ""))
    if found != model_sha256:
        raise PlanError(
            f"the {role} profile {source} was measured on a model with sha256 {found[:12] or '?'}..., "
            f"not this model ({model_sha256[:12]}...); re-run `splitinf profile` with this model"
        )


def profile_cut_codec(
    profile: Mapping[str, Any], cut_id: str, codec: str, *, role: str, source: str
) -> Mapping[str, Any]:
    """The profile's timings for one cut and codec; a PlanError names what is missing and the fix."""
    for entry in profile.get("cuts", ()):
        if entry.get("id") == cut_id:
            timings = entry.get("codecs", {}).get(codec)
            if timings is None:
                raise PlanError(
                    f"the {role} profile {source} has no timings for codec {codec} at cut {cut_id}; "
                    f"re-run `splitinf profile --codecs` including {codec}, or drop it from --codecs"
                )
            return dict(timings)
    raise PlanError(
        f"the {role} profile {source} lacks cut {cut_id}; re-run `splitinf profile` on the {role} "
        "with that cut (or without --cuts)"
    )


def profile_skips(profile: Mapping[str, Any], cut_id: str, codec: str) -> bool:
    """Whether the profile timed ``codec`` but not at ``cut_id``: it found the codec does not apply
    there (no float tensor, an opset it cannot convert; its ``notes`` say which), so the planner skips it too."""
    if codec not in profile.get("settings", {}).get("codecs", ()):
        return False
    entry = next((e for e in profile.get("cuts", ()) if e.get("id") == cut_id), None)
    return entry is not None and codec not in entry.get("codecs", {})


def profiled_cut_ids(profile: Mapping[str, Any]) -> list[str]:
    return [str(entry.get("id")) for entry in profile.get("cuts", ())]


# --- samples and model tensors --------------------------------------------------------------------


def io_specs(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The model's (inputs, outputs) as plan.json records them; initializers listed as inputs are not inputs."""
    from onnx import helper

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor_type = value.type.tensor_type
        dims: list[int | str | None] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
        ]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        return TensorSpec(value.name, dtype, tuple(dims))

    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(spec(v) for v in model.graph.input if v.name not in initializers)
    return inputs, tuple(spec(v) for v in model.graph.output)


def _check_fallback(
    main: tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]],
    small: tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]],
    path: str,
) -> None:
    def describe(specs: Sequence[TensorSpec]) -> list[str]:
        return [f"{s.name}:{s.dtype}{list(s.shape)}" for s in specs]

    def same(a: Sequence[TensorSpec], b: Sequence[TensorSpec]) -> bool:
        if [(s.name, s.dtype, len(s.shape)) for s in a] != [(s.name, s.dtype, len(s.shape)) for s in b]:
            return False
        for sa, sb in zip(a, b, strict=True):
            for da, db in zip(sa.shape, sb.shape, strict=True):
                if isinstance(da, int) and isinstance(db, int) and da != db:
                    return False
        return True

    for what, a, b in (("inputs", main[0], small[0]), ("outputs", main[1], small[1])):
        if not same(a, b):
            raise PlanError(
                f"the fallback {path} has {what} {describe(b)}, but the model has {describe(a)}; "
                "the fallback must take and return the same tensors"
            )


def _accuracy(
    outputs: Sequence[Mapping[str, np.ndarray]],
    reference: Sequence[Mapping[str, np.ndarray]],
    labels: np.ndarray | None,
) -> float | None:
    from splitinf.offline.codecs import compare_outputs, label_accuracy

    if labels is not None:
        return label_accuracy(outputs, labels)
    agreement = compare_outputs(reference, outputs)["top1_agreement"]
    return None if agreement is None else float(agreement)


def _profile_summary(profile: Mapping[str, Any], source: str) -> dict[str, Any]:
    return {
        "source": source,
        "machine": profile.get("machine"),
        "onnxruntime": profile.get("onnxruntime"),
        "settings": profile.get("settings"),
        "model_seconds": profile.get("model_seconds"),
    }


# --- plan_model's steps ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sources:
    """What a plan is made from: the model, its two profiles and the optional fallback."""

    name: str
    model: onnx.ModelProto
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    device: Mapping[str, Any]
    server: Mapping[str, Any]
    device_source: str
    server_source: str
    fallback: onnx.ModelProto | None
    fallback_path: str | None


@dataclass(frozen=True)
class _Samples:
    """Inputs to calibrate codecs on and to measure accuracy on, with the full model's outputs for each."""

    calibration: list[dict[str, np.ndarray]]
    held: list[dict[str, np.ndarray]]
    labels: np.ndarray | None  # of the held-out samples (of the calibration ones when none are held out)
    source: str  # "calibration" (the user's) or "random"
    reference: Mapping[str, list[dict[str, np.ndarray]]]  # the full model's outputs: "calibration", "held_out"
    inputs: InputSet  # what cuts, codecs and plan.json's shapes go by (its first set)
    warnings: list[str]  # inputs at other shapes than the profiles measured

    @property
    def held_key(self) -> str:
        """Which set accuracy is measured on: held-out samples when there are any."""
        return "held_out" if self.held else "calibration"

    @property
    def evaluation(self) -> list[dict[str, np.ndarray]]:
        return self.held or self.calibration


@dataclass(frozen=True)
class _Fallback:
    """One precision of the fallback: its option and the model to write."""

    option: Option
    model: onnx.ModelProto


@dataclass(frozen=True)
class _Int8Head:
    """A cut's int8 head as evaluated: the cut tensors its chain of int8 segments makes per sample set, how
    the segments were quantized, their size, and the fp32 head (which nodes a codec graph adds to)."""

    values: Mapping[str, list[dict[str, np.ndarray]]]  # "calibration", "held_out" -> per sample
    quantization: Mapping[str, Any]
    bytes: int
    fp32_head: onnx.ModelProto | None = None  # in the codec's form (its opset): set per codec


@dataclass(frozen=True)
class _Evaluated:
    """Every option priced and measured, before choosing which to hold."""

    codecs: tuple[str, ...]
    quantize: str | None
    cut_ids: list[str]
    input_cut: str
    splits: list[Option]
    quant: Mapping[str, Mapping[str, QuantParams]]  # per option id: its codec's scales, to rebuild it when written
    refused: Mapping[str, float]  # cut id -> its head's share of the model, for cuts over --max-device-share
    int8: QuantizedChain | None  # with --quantize: the int8 chain the int8 heads were measured on, written as is
    local: Option | None
    fallbacks: list[_Fallback]  # the fp32 fallback, then its int8 variant (with --quantize)
    fallback: _Fallback | None  # the one held: see _choose_fallback
    min_accuracy: float | None
    notes: list[str]  # codecs skipped at a cut, and why


def _read_sources(
    model: str | os.PathLike[str],
    device_profile: str | os.PathLike[str],
    server_profile: str | os.PathLike[str],
    fallback: str | os.PathLike[str] | None,
) -> _Sources:
    """Load the model, its profiles (refusing ones of another model) and the fallback (refusing other tensors)."""
    from splitinf.offline.graph import load_model
    from splitinf.offline.profiling import load_profile

    model_path = Path(model)
    full = load_model(model_path)
    model_sha = sha256_file(model_path)
    device, server = load_profile(device_profile), load_profile(server_profile)
    check_profile(device, role="device", model_sha256=model_sha, source=str(device_profile))
    check_profile(server, role="server", model_sha256=model_sha, source=str(server_profile))
    inputs, outputs = io_specs(full)
    fallback_model = None
    if fallback is not None:
        fallback_model = load_model(fallback)
        _check_fallback((inputs, outputs), io_specs(fallback_model), str(fallback))
    return _Sources(
        name=model_path.stem,
        model=full,
        sha256=model_sha,
        inputs=inputs,
        outputs=outputs,
        device=device,
        server=server,
        device_source=str(device_profile),
        server_source=str(server_profile),
        fallback=fallback_model,
        fallback_path=None if fallback is None else str(fallback),
    )


def _read_plan_samples(
    sources: _Sources,
    calibration: str | os.PathLike[str] | None,
    held_out: str | os.PathLike[str] | None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> _Samples:
    """The user's samples (the last quarter held out unless ``held_out`` is given), or random inputs at
    ``shapes`` (default: the shapes the profiles recorded); a warning per input at other shapes than profiled."""
    from splitinf.offline.codecs import run_model

    labels = None
    profiles = (sources.device, sources.server)
    if calibration is None:
        inputs, warnings = inputs_for_plan(sources.inputs, profiles, shapes=shapes, count=12)
        calibration_set, held = list(inputs.samples[:6]), list(inputs.samples[6:])
        source = "random"
    else:
        samples, all_labels = read_samples(calibration, sources.inputs)
        inputs, warnings = inputs_for_plan(sources.inputs, profiles, samples=samples, shapes=shapes)
        if held_out is not None:
            calibration_set = samples
            held, labels = read_samples(held_out, sources.inputs)
        else:
            n_held = len(samples) // 4
            calibration_set, held = samples[: len(samples) - n_held], samples[len(samples) - n_held :]
            if all_labels is not None:
                labels = all_labels.reshape(-1)[len(samples) - n_held :] if n_held else all_labels.reshape(-1)
        source = "calibration"
    for line in warnings:
        log.warning("%s", line)
    reference = {"calibration": run_model(sources.model, calibration_set), "held_out": run_model(sources.model, held)}
    return _Samples(calibration_set, held, labels, source, reference, inputs, warnings)


def _codec_names(codecs: str | Sequence[str] | None, calibrated: bool) -> tuple[str, ...]:
    from splitinf.offline.codecs import QUANTIZED, parse_codecs

    names = parse_codecs(codecs or ("fp32,fp16,int8" if calibrated else "fp32,fp16"))
    if not calibrated and any(c in QUANTIZED for c in names):
        raise PlanError("the int8/uint8 codecs need sample inputs to calibrate their scales; give --samples FILE.npz")
    return names


def _profiled_cuts(
    sources: _Sources, feeds: Mapping[str, np.ndarray]
) -> tuple[GraphView, dict[str, Any], str, list[str]]:
    """(the model's graph at ``feeds``, its cuts by id, the input cut, the profiled cuts worth a split),
    refusing unknown cuts.

    Cuts are enumerated on ``feeds`` as the profile enumerated them on its inputs: which tensors can
    be cut (and so the ids) depend on the input shapes. A profiled cut the enumeration lacks (one
    given by tensor names to ``profile --cuts``) is looked up by its id."""
    from splitinf.offline.graph import GraphView

    view = GraphView(sources.model, feeds)
    cuts = {cut.id: cut for cut in view.cuts()}
    input_cut = next(iter(cuts))
    cut_ids = profiled_cut_ids(sources.device)
    unknown = []
    for missing in [c for c in cut_ids if c not in cuts]:
        try:
            cuts[missing] = view.find(missing)
        except CutError:
            unknown.append(missing)
    if unknown:
        raise PlanError(
            f"the device profile names cuts this model lacks at these input shapes: {unknown}; re-profile this "
            "model, or plan with the --shape/--samples it was profiled with"
        )
    if input_cut not in cut_ids:
        raise PlanError(
            f"the device profile lacks the input cut {input_cut} (full offload), which every plan weighs; "
            "re-run `splitinf profile` without --cuts or with it included"
        )
    # A cut made of graph outputs leaves the tail nothing to compute: it is the local option plus a round
    # trip, never a split worth holding (and with include_local=False it would smuggle the local option in).
    graph_outputs = {o.name for o in sources.model.graph.output}
    return view, cuts, input_cut, [c for c in cut_ids if not set(cuts[c].names) <= graph_outputs]


def _within_share(
    cuts: Mapping[str, Any], cut_ids: Sequence[str], share: DeviceShare | None
) -> tuple[list[str], dict[str, float]]:
    """The cuts whose head is within ``share`` of the model, and the share of each one refused."""
    if share is None:
        return list(cut_ids), {}
    refused = {c: share.of(cuts[c]) for c in cut_ids if not share.allows(cuts[c])}
    return [c for c in cut_ids if c not in refused], refused


class _Evaluator:
    """Measures options on the samples: accuracy (labels, or top-1 agreement with the full model) and fidelity."""

    def __init__(self, sources: _Sources, samples: _Samples, threads: int | None) -> None:
        self.sources = sources
        self.samples = samples
        self.threads = threads

    def accuracy(self, outputs: Sequence[Mapping[str, np.ndarray]]) -> float | None:
        return _accuracy(outputs, self.samples.reference[self.samples.held_key], self.samples.labels)

    def encode(self, partition: Any, codec: str) -> Encoded:
        """The partition with ``codec`` applied, 8-bit scales calibrated on the calibration samples."""
        from splitinf.offline import codecs as wire_codecs

        quant = (
            wire_codecs.calibrate(partition, self.samples.calibration, codec, self.threads)
            if codec in wire_codecs.QUANTIZED
            else None
        )
        return wire_codecs.encode(partition, codec, quant)

    def split_option(self, encoded: Encoded, cut_id: str, int8: _Int8Head | None = None) -> Option:
        """One (cut, codec, head precision) option: fidelity and accuracy measured, times from the profiles.

        ``int8`` is the int8 head's cut tensors (what its chain of int8 segments makes), measured through the
        codec graph and the fp32 tail; its time is the profile's ``int8_head``.
        """
        sources, codec = self.sources, encoded.codec
        precision = "fp32" if int8 is None else "int8"
        dev = profile_cut_codec(sources.device, cut_id, codec, role="device", source=sources.device_source)
        srv = profile_cut_codec(sources.server, cut_id, codec, role="server", source=sources.server_source)
        head_timing = dev["head"] if int8 is None else dev.get(f"{precision}_head")
        if head_timing is None:
            raise PlanError(
                f"the device profile {sources.device_source} has no {precision} head timings for cut {cut_id} "
                f"(codec {codec}); re-run `splitinf profile --quantize {precision}` on the device"
            )
        if int8 is None:
            fidelity, accuracy = self._measure(encoded)
            device_bytes = encoded.head.ByteSize()
        else:
            from splitinf.offline.segments import codec_model

            assert int8.fp32_head is not None
            codec_graph = codec_model(int8.fp32_head, encoded.head)
            fidelity, accuracy = self._measure_int8(encoded, codec_graph, int8)
            device_bytes = int8.bytes + (0 if codec_graph is None else codec_graph.ByteSize())
        option_id, _, tail_model = option_names(sources.name, cut_id, codec, precision)
        return Option(
            id=option_id,
            kind="split",
            cut_id=cut_id,
            codec=codec,
            tail_model=tail_model,  # its head's files are named when the held options are written
            wire=encoded.wire,
            wire_bytes=int(fidelity["bytes_per_sample"] or encoded.bytes_per_sample),
            head_seconds=float(head_timing["median"]),
            tail_seconds=float(srv["tail"]["median"]),
            # serialisation at both ends: the device builds the request, the server parses it
            serialize_seconds=float(dev.get("serialize", {}).get("median", 0.0))
            + float(srv.get("deserialize", {}).get("median", 0.0)),
            accuracy=accuracy,
            fidelity=fidelity,
            precision=precision,
            device_bytes=device_bytes,  # the head's size in memory; the sum of its files once written
        )

    def _measure(self, encoded: Encoded) -> tuple[dict[str, Any], float | None]:
        """(fidelity, accuracy) of the fp32 head with its codec."""
        from splitinf.offline import codecs as wire_codecs

        samples = self.samples
        fidelity = wire_codecs.fidelity(
            self.sources.model, encoded, samples.calibration, samples.held, self.threads, reference=samples.reference
        )
        fidelity["samples"] = samples.source
        if samples.labels is None:
            return fidelity, fidelity[samples.held_key]["top1_agreement"]
        return fidelity, self.accuracy(wire_codecs.run_encoded(encoded, samples.evaluation, self.threads)[0])

    def _measure_int8(
        self, encoded: Encoded, codec_graph: onnx.ModelProto | None, int8: _Int8Head
    ) -> tuple[dict[str, Any], float | None]:
        """(fidelity, accuracy) of the int8 head as the device runs it: the int8 chain's cut tensors through the
        codec graph (the fp32 head's, None for fp32 on the wire), then the fp32 tail."""
        from splitinf.offline.codecs import compare_outputs

        samples = self.samples
        models = [encoded.tail] if codec_graph is None else [codec_graph, encoded.tail]
        codec_and_tail = Chain(f"int8 head, codec {encoded.codec}", [make_session(m, self.threads) for m in models])
        answers = [o.name for o in codec_and_tail.sessions[-1].get_outputs()]
        fidelity: dict[str, Any] = {"codec": encoded.codec, "bytes_per_sample": 0}
        outputs: dict[str, list[dict[str, np.ndarray]]] = {}
        for key, cut_values in int8.values.items():
            outputs[key] = []
            for values in cut_values:
                made = codec_and_tail.run(values)
                wire_bytes = sum(made[t.name].nbytes for t in encoded.wire)
                fidelity["bytes_per_sample"] = fidelity["bytes_per_sample"] or wire_bytes
                outputs[key].append({n: made[n] for n in answers})
            if outputs[key]:
                fidelity[key] = compare_outputs(samples.reference[key], outputs[key])
        fidelity |= {"samples": samples.source, "quantization": dict(int8.quantization)}
        if samples.labels is None:
            return fidelity, fidelity[samples.held_key]["top1_agreement"]
        return fidelity, self.accuracy(outputs[samples.held_key])

    def local_accuracy(self) -> float | None:
        from splitinf.offline.codecs import run_model

        if self.samples.labels is None:
            return 1.0  # the full model agrees with itself
        return self.accuracy(run_model(self.sources.model, self.samples.evaluation))

    def fallback_options(self, quantize: str | None) -> list[_Fallback]:
        """The fallback (and with ``quantize`` its int8 variant), each priced by the device profile when it
        timed this file, else timed here (and said so). The int8 one's fidelity is against the fp32 fallback."""
        from splitinf.offline.codecs import compare_outputs, run_model
        from splitinf.offline.quantize import has_weights, quantize_model

        sources, samples = self.sources, self.samples
        if sources.fallback is None or sources.fallback_path is None:
            return []
        timed = sources.device.get("fallback") or {}
        profiled = timed.get("sha256") == sha256_file(sources.fallback_path)
        fp32_outputs = run_model(sources.fallback, samples.evaluation)
        variants = [
            _Fallback(
                Option(
                    id="fallback",
                    kind="fallback",
                    model=("device/fallback.onnx",),
                    seconds=self._fallback_seconds(sources.fallback, timed.get("seconds") if profiled else None),
                    accuracy=self.accuracy(fp32_outputs),
                    fidelity={"seconds_source": "device profile" if profiled else _MEASURED_HERE},
                    device_bytes=sources.fallback.ByteSize(),
                ),
                sources.fallback,
            )
        ]
        if quantize is None or not has_weights(sources.fallback):
            return variants
        quantized = quantize_model(sources.fallback, samples.calibration)
        int8_timing = timed.get("int8_seconds") if profiled else None
        if profiled and int8_timing is None:
            raise PlanError(
                f"the device profile {sources.device_source} timed the fallback but not its int8 variant; "
                "re-run `splitinf profile --quantize int8 --fallback ...` on the device"
            )
        int8_outputs = run_model(quantized.model, samples.evaluation)
        fidelity: dict[str, Any] = {
            "seconds_source": "device profile" if profiled else _MEASURED_HERE,
            "against": "the fp32 fallback",
            "quantization": quantized.describe(),
        }
        for key, inputs in (("calibration", samples.calibration), ("held_out", samples.held)):
            if inputs:
                fidelity[key] = compare_outputs(run_model(sources.fallback, inputs), run_model(quantized.model, inputs))
        option = Option(
            id="fallback",
            kind="fallback",
            model=("device/fallback.onnx",),
            seconds=self._fallback_seconds(quantized.model, int8_timing),
            accuracy=self.accuracy(int8_outputs),
            fidelity=fidelity,
            precision="int8",
            device_bytes=quantized.model.ByteSize(),
        )
        return variants + [_Fallback(option, quantized.model)]

    def _fallback_seconds(self, model: onnx.ModelProto, profiled: Mapping[str, Any] | None) -> float:
        from splitinf.offline.profiling import time_callable

        if profiled is not None:
            return float(profiled["median"])
        session = make_session(model, self.sources.device.get("onnxruntime", {}).get("threads") or None)
        feed = {i.name: self.samples.calibration[0][i.name] for i in session.get_inputs()}
        return time_callable(lambda: session.run(None, feed), repeats=20, warmup=3).median


_MEASURED_HERE = "measured on the planning machine (profile the fallback on the device for real figures)"


def _choose_fallback(fallbacks: Sequence[_Fallback], max_accuracy_drop: float) -> _Fallback | None:
    """The fallback to hold: the int8 one when it is as accurate as the fp32 one (within ``max_accuracy_drop``,
    the floor split options get too) and no slower, else the fp32 one. One fallback is held: the device
    answers from it when nothing else fits, so speed matters but accuracy comes first."""
    if not fallbacks:
        return None
    fp32, *others = fallbacks
    for candidate in others:
        a, b = candidate.option.accuracy, fp32.option.accuracy
        if (
            a is not None
            and b is not None
            and a >= b - max_accuracy_drop
            and candidate.option.seconds <= fp32.option.seconds
        ):
            return candidate
    return fp32


def _cut_options(
    evaluator: _Evaluator, partition: Any, codecs: Sequence[str], int8: _Int8Head | None
) -> Iterator[list[tuple[Option, Mapping[str, QuantParams]]]]:
    """A cut's options, one codec at a time (one codec's models in memory): the fp32 head, and with ``int8``
    (its head's int8 chain) also the int8 head (same codec graph, same wire scales, so the same tail);
    each with its codec's scales."""
    cut_id = partition.cut.id
    for codec in codecs:
        encoded = evaluator.encode(partition, codec)
        options = [(evaluator.split_option(encoded, cut_id), encoded.quant)]
        if int8 is not None:
            int8_head = dataclasses.replace(int8, fp32_head=partition.head)  # the codec's form (opset) of the head
            options.append((evaluator.split_option(encoded, cut_id, int8_head), encoded.quant))
        del encoded
        yield options


def _int8_head(chain: Int8Chain, cut_id: str) -> _Int8Head | None:
    """The int8 head at ``cut_id`` (the chain walked to it), None when its head has no weights to quantize."""
    values = chain.head(cut_id)
    if values is None:
        return None
    segments = chain.result().up_to(cut_id)
    quantized = [s.quantization for s in segments if s.quantization is not None]
    quantization = dict(quantized[0]) | {"segments": len(quantized)}
    return _Int8Head(values, quantization, sum(len(s.data) for s in segments))


def _cut_codecs(sources: _Sources, cut: Any, codecs: Sequence[str], notes: list[str]) -> list[str]:
    """The codecs worth an option at ``cut``: those that change something there and that neither
    profile skipped; a note in ``notes`` for the others."""
    from splitinf.offline.codecs import applicable_codecs

    applicable, note = applicable_codecs(cut, codecs)
    notes.extend([note] if note else [])
    kept = []
    for codec in applicable:
        skipped_by = [
            r for r, p in (("device", sources.device), ("server", sources.server)) if profile_skips(p, cut.id, codec)
        ]
        if skipped_by:
            notes.append(
                f"codec {codec} skipped at cut {cut.id}: the {' and '.join(skipped_by)} profile did not "
                "time it there (see its notes)"
            )
        else:
            kept.append(codec)
    return kept


def _evaluate(
    sources: _Sources,
    samples: _Samples,
    codecs: tuple[str, ...],
    *,
    quantize: str | None,
    max_accuracy_drop: float,
    include_local: bool,
    threads: int | None,
    share: DeviceShare | None = None,
    progress: bool = False,
) -> _Evaluated:
    """Every (profiled cut, codec, head precision) option within the device share, the local model and the
    fallback(s), priced and measured; one codec's models in memory at a time (the held ones are rebuilt when
    written). Cuts are weighed in chain order (the int8 chain is walked once); options keep the profile's order."""
    from splitinf.offline.codecs import for_codec
    from splitinf.offline.partition import split_model
    from splitinf.offline.profiling import ProgressBar
    from splitinf.offline.quantize import Int8Chain, quantize_method

    view, cuts, input_cut, profiled = _profiled_cuts(sources, samples.inputs.first)
    cut_ids, refused = _within_share(cuts, profiled, share)
    include_local = include_local and (share is None or share.allows_whole_model)
    evaluator = _Evaluator(sources, samples, threads)
    local_accuracy = evaluator.local_accuracy()
    splits: list[Option] = []
    quant: dict[str, Mapping[str, QuantParams]] = {}
    notes: list[str] = []
    bar = ProgressBar(len(cut_ids) * len(codecs), enabled=progress)
    int8_chain = None
    if quantize:
        evaluation = {"calibration": samples.calibration, "held_out": samples.held}
        method = quantize_method(sources.model)  # the whole model's choice, as the profile timed it
        int8_chain = Int8Chain(
            view, [cuts[c] for c in cut_ids], samples.calibration, evaluation, method=method, threads=threads
        )
    del view
    for cut_id in sorted(cut_ids, key=lambda c: 0 if int8_chain is None else int8_chain.reach[c]):
        partition = split_model(sources.model, cuts[cut_id])
        int8 = None if int8_chain is None else _int8_head(int8_chain, cut_id)
        for codec in _cut_codecs(sources, cuts[cut_id], codecs, notes):
            ready, note = for_codec(partition, codec, samples.inputs.first, threads)
            if ready is None:
                notes.append(str(note))
                continue
            for options in _cut_options(evaluator, ready, (codec,), int8):
                for option, quant[option.id] in options:
                    splits.append(option)
                bar.step(options[0][0].id)
        del partition, int8
    order = {cut_id: i for i, cut_id in enumerate(cut_ids)}
    splits.sort(key=lambda o: order[str(o.cut_id)])
    # every split answers with the model's outputs, which cross the link back: bytes at the plan's shapes
    response_bytes = sum(int(v.nbytes) for v in samples.reference["calibration"][0].values())
    splits = [dataclasses.replace(o, response_bytes=response_bytes) for o in splits]
    local = None
    if include_local:
        seconds = float(sources.device["model_seconds"]["median"])
        # its files (the whole chain) are named when written; its size until then: the model's
        local = Option(
            id="local", kind="local", seconds=seconds, accuracy=local_accuracy, device_bytes=sources.model.ByteSize()
        )
    fallbacks = evaluator.fallback_options(quantize)
    return _Evaluated(
        codecs=codecs,
        quantize=quantize,
        cut_ids=cut_ids,
        input_cut=input_cut,
        splits=splits,
        quant=quant,
        refused=refused,
        int8=None if int8_chain is None else int8_chain.result(),
        local=local,
        fallbacks=fallbacks,
        fallback=_choose_fallback(fallbacks, max_accuracy_drop),
        min_accuracy=None if local_accuracy is None else local_accuracy - max_accuracy_drop,
        notes=notes,
    )


def _select(
    evaluated: _Evaluated, bandwidths: Sequence[float], rtts: Sequence[float], max_candidates: int
) -> list[Option]:
    return select_candidates(
        evaluated.splits,
        full_offload={o.id for o in evaluated.splits if o.cut_id == evaluated.input_cut},
        local=evaluated.local,
        bandwidths_bps=bandwidths,
        rtts_s=rtts,
        max_candidates=max_candidates,
        min_accuracy=evaluated.min_accuracy,
    )


def _write_split(
    build: Path,
    sources: _Sources,
    partition: Any,
    options: Sequence[Option],
    quant: Mapping[str, QuantParams],
    chains: Mapping[str, ChainFiles],
) -> list[Option]:
    """Options sharing one tail (a cut and codec; fp32 and int8 heads), rebuilt from ``partition`` and the
    codec's scales: each head is its precision's chain of segments (``chains``) up to its cut, then the
    codec's graph (in ``device/codecs``, one file for both precisions); the tail once into the ``server``
    repository, its manifest naming the fp32 head's files ``head.0``, ``head.1``, ... and the int8 head's
    ``head_int8.0``, ``head_int8.1``, ..."""
    from splitinf.offline.codecs import encode
    from splitinf.offline.partition import save_model, write_to_repository
    from splitinf.offline.segments import codec_model

    option = options[0]
    assert option.cut_id is not None and option.codec is not None and option.tail_model is not None
    encoded = encode(partition, option.codec, quant)
    codec_files: list[tuple[str, str]] = []
    codec_graph = codec_model(partition.head, encoded.head)
    if codec_graph is not None:
        _, codec_path, _ = option_names(sources.name, option.cut_id, option.codec)
        codec_files.append((codec_path, save_model(codec_graph, build / codec_path)))
    heads: dict[str, list[tuple[str, str]]] = {}
    parts: dict[str, dict[str, str]] = {}
    for o in options:
        heads[o.id] = [*chains[o.precision].up_to(option.cut_id), *codec_files]
        prefix = "head" if o.precision == "fp32" else f"head_{o.precision}"
        parts |= {f"{prefix}.{i}": {"file": path, "sha256": sha} for i, (path, sha) in enumerate(heads[o.id])}
    manifest = build_manifest(
        source_name=sources.name,
        source_sha256=sources.sha256,
        cut_id=option.cut_id,
        cut_tensors=encoded.cut.tensors,
        cut_bytes=int(encoded.cut.bytes_per_sample),
        codec=option.codec,
        wire=encoded.wire,
        opset=[(o.domain, o.version) for o in encoded.tail.opset_import],
        ir_version=encoded.tail.ir_version,
        parts=parts,
    )
    tail_path = write_to_repository(encoded.tail, build / "server", option.tail_model, "1", manifest)
    tail_sha = sha256_file(tail_path)
    tail_model = content_addressed_name(option.tail_model, tail_sha)
    (build / "server" / option.tail_model).rename(build / "server" / tail_model)
    return [
        dataclasses.replace(
            o,
            head=tuple(path for path, _ in heads[o.id]),
            head_sha256=tuple(sha for _, sha in heads[o.id]),
            device_bytes=_files_bytes(build, heads[o.id]),
            tail_model=tail_model,
            tail_version="1",
            tail_sha256=tail_sha,
        )
        for o in options
    ]


def _files_bytes(build: Path, files: Sequence[tuple[str, str]]) -> int:
    """What a chain of files costs the device on its own: the sum of their sizes (segments it shares with
    other options are counted in each; the plan's device part counts each file once)."""
    return sum((build / path).stat().st_size for path, _ in files)


def _write_chains(build: Path, view: GraphView, evaluated: _Evaluated, held: Sequence[Option]) -> dict[str, ChainFiles]:
    """The segment files the held options run, per head precision, each file once: fp32 segments between the
    held fp32 cuts (and on to the outputs when the local option is held); int8 segments as measured, up to the
    deepest held int8 head (a segment without weights is the fp32 file when that file is the same)."""
    from splitinf.offline.segments import write_chain, write_serialized_chain

    fp32_cuts = dict.fromkeys(o.cut_id for o in held if o.cut_id is not None and o.precision == "fp32")
    chains = {
        "fp32": write_chain(
            build, view, [view.find(cut_id) for cut_id in fp32_cuts], to_outputs=evaluated.local is not None
        )
    }
    int8 = evaluated.int8
    int8_reach = [int8.reach[str(o.cut_id)] for o in held if o.precision == "int8" and int8 is not None]
    if int8 is not None and int8_reach:
        segments = [(s.end, s.data) for s in int8.segments[: max(int8_reach)]]
        chains["int8"] = write_serialized_chain(
            build, "device/segments-int8", segments, int8.reach, reuse=chains["fp32"]
        )
    return chains


def _write_models(
    build: Path, sources: _Sources, samples: _Samples, evaluated: _Evaluated, held: Sequence[Option]
) -> tuple[Option, ...]:
    """Every held option's files, each weight once (:func:`_write_chains`): segments, codec graphs, tails, the
    fallback; one cut's models in memory at a time. Returns the options with their files."""
    from splitinf.offline.codecs import for_codec
    from splitinf.offline.graph import GraphView
    from splitinf.offline.partition import save_model, split_model
    from splitinf.offline.segments import OUTPUTS_END

    view = GraphView(sources.model, samples.inputs.first)  # the cut ids are those at the plan's shapes
    chains = _write_chains(build, view, evaluated, held)
    by_cut: dict[str, dict[str, list[Option]]] = {}
    for option in held:
        assert option.cut_id is not None and option.tail_model is not None
        by_cut.setdefault(option.cut_id, {}).setdefault(option.tail_model, []).append(option)
    written: dict[str, Option] = {}
    for cut_id, groups in by_cut.items():
        partition = split_model(sources.model, view.find(cut_id))
        for group in groups.values():
            # the codec's form of the parts, as evaluated (an old opset converted for an 8-bit codec)
            ready, note = for_codec(partition, str(group[0].codec), samples.inputs.first, None)
            if ready is None:
                raise PlanError(f"cut {cut_id}: {note}")
            for option in _write_split(build, sources, ready, group, evaluated.quant[group[0].id], chains):
                written[option.id] = option
        del partition
    del view
    result = [written[o.id] for o in held]
    if evaluated.local is not None:
        files = chains["fp32"].up_to(OUTPUTS_END)
        result.append(
            dataclasses.replace(
                evaluated.local,
                model=tuple(p for p, _ in files),
                sha256=tuple(sha for _, sha in files),
                device_bytes=_files_bytes(build, files),
            )
        )
    fallback = evaluated.fallback
    if fallback is not None:
        path = "device/fallback.onnx"
        result.append(dataclasses.replace(fallback.option, sha256=(save_model(fallback.model, build / path),)))
    return tuple(result)


def _evaluated_record(
    samples: _Samples,
    evaluated: _Evaluated,
    held: Sequence[Option],
    grid: tuple[Sequence[float], Sequence[float]],
    share: DeviceShare | None,
) -> dict[str, Any]:
    """plan.json's account of what was weighed: codecs, cuts, samples, and every option not held."""
    held_ids = {o.id for o in held}
    return {
        "codecs": list(evaluated.codecs),
        "quantize": evaluated.quantize,
        "cuts": evaluated.cut_ids,
        "options": len(evaluated.splits),
        "grid": {"bandwidths_bps": list(grid[0]), "rtts_s": list(grid[1])},
        "samples": samples.source,
        "calibration_samples": len(samples.calibration),
        "held_out_samples": len(samples.held),
        "accuracy": "labels" if samples.labels is not None else "top-1 agreement with the full model",
        "min_accuracy": evaluated.min_accuracy,
        "fallbacks": [
            dict(f.option.to_json(), held=f is evaluated.fallback) | {"model": None, "sha256": None}
            for f in evaluated.fallbacks
        ],
        "notes": list(dict.fromkeys(evaluated.notes)),
        "shape_warnings": samples.warnings,
        "max_device_share": None if share is None else str(share),
        "refused_by_device_share": dict(evaluated.refused),
        "not_held": [
            {
                "id": o.id,
                "precision": o.precision,
                "device_bytes": o.device_bytes,
                "bytes": o.wire_bytes,
                "head_seconds": o.head_seconds,
                "tail_seconds": o.tail_seconds,
                "serialize_seconds": o.serialize_seconds,
                "accuracy": o.accuracy,
                "fidelity": dict(o.fidelity),
            }
            for o in evaluated.splits
            if o.id not in held_ids
        ],
    }


def plan_model(
    model: str | os.PathLike[str],
    *,
    device_profile: str | os.PathLike[str],
    server_profile: str | os.PathLike[str],
    output: str | os.PathLike[str],
    fallback: str | os.PathLike[str] | None = None,
    calibration: str | os.PathLike[str] | None = None,
    held_out: str | os.PathLike[str] | None = None,
    codecs: str | Sequence[str] | None = None,
    quantize: str | None = None,
    max_candidates: int = 4,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    bandwidths_bps: Sequence[float] | None = None,
    rtts_s: Sequence[float] | None = None,
    reference_rtt_s: float = 0.02,
    budget_s: float = DEFAULT_BUDGET_S,
    include_local: bool = True,
    hold_all: bool = False,
    threads: int | None = 1,
    shapes: Mapping[str, Sequence[int]] | None = None,
    max_device_share: DeviceShare | None = None,
    progress: bool = False,
) -> Plan:
    """Build the plan directory ``output`` from a model, its two profiles and sample inputs (the I/O wrapper).

    Reads the profiles (refusing ones of another model or missing cuts), applies each codec to
    each profiled cut (calibrating 8-bit scales, measuring fidelity and accuracy on the samples),
    prices every option, holds the few that are fastest somewhere on the grid (every one with
    ``hold_all``) and writes the layout of :mod:`splitinf.contract.plan` with ``report.md`` and
    ``latency.svg`` (choices marked within ``budget_s``). Samples: an .npz with one array per model
    input, stacked on axis 0, optionally ``labels``. Without samples, random inputs at ``shapes``
    (``--shape``), else at the shapes the profiles recorded. Cuts, bytes and codecs go by the first
    input set; plan.json records its shapes (``inputs_at``). Returns the plan as loaded back from ``output``.

    ``quantize="int8"`` adds, for each head with weights, an int8 variant of every option (an option
    of its own, weighed like the others and kept out by the same accuracy floor), and an int8
    variant of the fallback, held instead of the fp32 one when as accurate (:func:`_choose_fallback`).
    The device profile must then hold int8 timings (``splitinf profile --quantize int8``).

    ``max_device_share`` refuses cuts whose head is a larger share of the model
    (:mod:`splitinf.offline.device_share`; without ``include_local`` it defaults to
    ``NO_LOCAL_DEFAULT``). ``progress`` draws a bar with an ETA on stderr, one step per (cut, codec)
    weighed (its int8 head with it).
    """
    from splitinf.offline.device_share import NO_LOCAL_DEFAULT
    from splitinf.offline.plan_report import latency_svg, report_markdown
    from splitinf.offline.quantize import parse_quantize, quantize_method

    if max_candidates < 0:
        raise PlanError(f"--max-candidates must be >= 0, got {max_candidates}")
    bandwidths = tuple(sorted(bandwidths_bps)) if bandwidths_bps else DEFAULT_BANDWIDTHS_BPS
    rtts = tuple(sorted(rtts_s)) if rtts_s else DEFAULT_RTTS_S
    precision = parse_quantize(quantize)
    sources = _read_sources(model, device_profile, server_profile, fallback)
    codec_names = _codec_names(codecs, calibrated=calibration is not None)
    if precision is not None and calibration is None and quantize_method(sources.model) == "static":
        raise PlanError(
            f"--quantize {precision} calibrates the heads' activation ranges on sample inputs; give --samples "
            "(an .npz of real inputs)"
        )
    samples = _read_plan_samples(sources, calibration, held_out, shapes)
    share = max_device_share if max_device_share is not None or include_local else NO_LOCAL_DEFAULT
    evaluated = _evaluate(
        sources,
        samples,
        codec_names,
        quantize=precision,
        max_accuracy_drop=max_accuracy_drop,
        include_local=include_local,
        threads=threads,
        share=share,
        progress=progress,
    )
    held = evaluated.splits if hold_all else _select(evaluated, bandwidths, rtts, max_candidates)
    target = Path(output)
    with staged_directory(target, ours=("plan.json",)) as build:
        plan = Plan(
            model_name=sources.name,
            model_sha256=sources.sha256,
            inputs=sources.inputs,
            outputs=sources.outputs,
            options=_write_models(build, sources, samples, evaluated, held),
            budget_s=budget_s,
            inputs_at=samples.inputs.to_json(),
            profiles={
                "device": _profile_summary(sources.device, sources.device_source),
                "server": _profile_summary(sources.server, sources.server_source),
                "evaluated": _evaluated_record(samples, evaluated, held, (bandwidths, rtts), share),
            },
            root=build,  # for the report, which sizes the files written
        )
        write_json_atomic(build / "plan.json", plan.to_json())
        (build / "report.md").write_text(report_markdown(plan, reference_rtt_s))
        (build / "latency.svg").write_text(latency_svg(plan, reference_rtt_s))
        load_plan(build, check_files=("device", "server"))
    return load_plan(target, check_files=("device", "server"))
