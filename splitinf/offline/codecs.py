"""Wire codecs as graph surgery on a partition's head and tail.

A codec changes how the crossing tensors travel, and lives in the models themselves:

- ``fp32``: the tensors as they are.
- ``fp16``: the head ends in ``Cast(to=FLOAT16)``, the tail starts with ``Cast(to=FLOAT)``.
- ``int8`` / ``uint8``: the head ends in ``QuantizeLinear``, the tail starts with
  ``DequantizeLinear``; the per-tensor scale and zero point are calibrated from sample
  values of the crossing tensor (:func:`calibrate`) and stored as initializers on both sides.

Only float32 crossing tensors are converted; others pass through unchanged, and a cut with no
float32 tensor has no codec but fp32 (:func:`applicable_codecs`: integer token ids or booleans
travel as they are). A codec's ops need an opset (fp16: 6, int8/uint8: 10); :func:`for_codec`
converts older parts with onnx's version converter, checked against the unconverted parts on a
sample, or says in one line why the codec is skipped. A converted
tensor travels under a distinct name (``<name>__fp16``, ``<name>__int8``...), so the tail is
an ordinary ONNX model that any V2 server runs. :func:`encode` is pure; :func:`calibrate`
and :func:`fidelity` run onnxruntime.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnx
import onnx.version_converter
from onnx import TensorProto, helper, numpy_helper

from splitinf.contract.tensors import TensorSpec
from splitinf.errors import InputError, PlanError
from splitinf.offline.graph import Cut, spec_value_info
from splitinf.offline.inputs import run_checked
from splitinf.offline.sessions import make_session

__all__ = [
    "CODECS",
    "CODEC_OPSET",
    "applicable_codecs",
    "for_codec",
    "Encoded",
    "QuantParams",
    "calibrate",
    "compare_outputs",
    "encode",
    "fidelity",
    "parse_codecs",
    "run_encoded",
]

CODECS = ("fp32", "fp16", "int8", "uint8")
QUANTIZED = ("int8", "uint8")
_WIRE_DTYPE = {"fp16": "float16", "int8": "int8", "uint8": "uint8"}
_QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}
CODEC_OPSET = {"fp32": 1, "fp16": 6, "int8": 10, "uint8": 10}  # the ONNX opset a codec's ops need
# converted parts run the same maths in newer op versions: agreement to float rounding
_CONVERTED_TOLERANCE = 1e-4

Sample = Mapping[str, np.ndarray]


class PartitionLike(Protocol):
    """What the codecs need of ``splitinf.offline.partition.Partition``."""

    @property
    def cut(self) -> Cut: ...

    @property
    def head(self) -> onnx.ModelProto: ...

    @property
    def tail(self) -> onnx.ModelProto: ...


@dataclass(frozen=True)
class QuantParams:
    scale: float
    zero_point: int


@dataclass(frozen=True)
class Encoded:
    """A partition with a codec applied: the head and tail to export, and what crosses the wire."""

    codec: str
    cut: Cut
    head: onnx.ModelProto
    tail: onnx.ModelProto
    wire: tuple[TensorSpec, ...]
    quant: Mapping[str, QuantParams]

    @property
    def bytes_per_sample(self) -> int:
        return sum(t.sample_bytes for t in self.wire)


def parse_codecs(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"fp32,fp16"`` -> ``("fp32", "fp16")``; unknown names are a PlanError naming the choices."""
    names = [c.strip() for c in (text.split(",") if isinstance(text, str) else text) if c.strip()]
    unknown = [c for c in names if c not in CODECS]
    if unknown or not names:
        raise PlanError(f"unknown codec(s) {unknown or names!r}; choose from {', '.join(CODECS)}")
    return tuple(dict.fromkeys(names))


def _fresh_name(base: str, taken: set[str]) -> str:
    name, n = base, 1
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def _all_names(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    names = {i.name for i in g.input} | {o.name for o in g.output} | {i.name for i in g.initializer}
    for node in g.node:
        names.update(node.input)
        names.update(node.output)
    return names


def applicable_codecs(cut: Cut, codecs: Sequence[str]) -> tuple[tuple[str, ...], str | None]:
    """The codecs that change something at ``cut`` and a one-line note on those dropped: a cut
    with no float32 tensor (token ids, masks) has only fp32, its tensors travel as they are."""
    if any(t.dtype == "float32" for t in cut.tensors):
        return tuple(codecs), None
    dropped = [c for c in codecs if c != "fp32"]
    note = None
    if dropped:
        dtypes = sorted({t.dtype for t in cut.tensors})
        note = f"cut {cut.id}: no codec {'/'.join(dropped)}, its {'/'.join(dtypes)} tensors travel as they are (fp32)"
    return ("fp32",), note


@dataclass(frozen=True)
class _Parts:
    cut: Cut
    head: onnx.ModelProto
    tail: onnx.ModelProto


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _max_rel_error(want: Sequence[np.ndarray], have: Sequence[np.ndarray]) -> float:
    worst = 0.0
    for a, b in zip(want, have, strict=True):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a64.shape != b64.shape:
            return math.inf
        if a64.size:
            worst = max(worst, float(np.abs(a64 - b64).max() / max(np.abs(a64).max(), 1e-12)))
    return worst


def for_codec(
    partition: PartitionLike, codec: str, sample: Sample | None, threads: int | None = 1
) -> tuple[PartitionLike | None, str | None]:
    """The partition ready for ``codec``: itself when its opset has the codec's ops, else both parts
    converted with ``onnx.version_converter`` and checked against the originals on ``sample``; or
    None and a one-line note on why the codec is skipped at this cut."""
    needed = CODEC_OPSET.get(codec, 1)
    found = min(_opset(partition.head), _opset(partition.tail))
    if found >= needed:
        return partition, None
    skipped = f"codec {codec} skipped at cut {partition.cut.id}: it needs ONNX opset >= {needed}, the model has {found}"
    if sample is None:
        return None, f"{skipped} and no sample input to check an opset conversion on"
    try:
        head = onnx.version_converter.convert_version(partition.head, needed)
        tail = onnx.version_converter.convert_version(partition.tail, needed)
        old_head, new_head = make_session(partition.head, threads), make_session(head, threads)
        feeds = {i.name: sample[i.name] for i in old_head.get_inputs()}
        wire = run_checked(old_head, feeds, "the head")
        wire_feeds = dict(zip([o.name for o in old_head.get_outputs()], wire, strict=True))
        old_tail, new_tail = make_session(partition.tail, threads), make_session(tail, threads)
        error = max(
            _max_rel_error(wire, run_checked(new_head, feeds, "the converted head")),
            _max_rel_error(run_checked(old_tail, wire_feeds, "the tail"), run_checked(new_tail, wire_feeds)),
        )
    except (RuntimeError, ValueError, InputError, onnx.checker.ValidationError) as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return None, f"{skipped}, and onnx's version converter could not convert it ({first[:160]})"
    if error > _CONVERTED_TOLERANCE:
        return None, f"{skipped}, and the converted parts differ from the originals (max rel error {error:.2g})"
    return _Parts(partition.cut, head, tail), None


def _ensure_opset(model: onnx.ModelProto, minimum: int, codec: str) -> None:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < minimum:
            raise PlanError(
                f"codec {codec} needs ONNX opset >= {minimum}, the model has {opset.version}; "
                "convert the model with onnx.version_converter or use codec fp32"
            )


def encode(partition: PartitionLike, codec: str, quant: Mapping[str, QuantParams] | None = None) -> Encoded:
    """Apply ``codec`` to the partition's crossing tensors (pure: returns new models).

    ``quant`` (from :func:`calibrate`) is required for int8/uint8 and must cover every float32
    crossing tensor.
    """
    if codec not in CODECS:
        raise PlanError(f"unknown codec {codec!r}; choose from {', '.join(CODECS)}")
    specs = tuple(partition.cut.tensors)
    if codec == "fp32":
        return Encoded(codec, partition.cut, partition.head, partition.tail, specs, {})
    converted = [t for t in specs if t.dtype == "float32"]
    if codec in QUANTIZED:
        missing = [t.name for t in converted if quant is None or t.name not in quant]
        if missing:
            raise PlanError(f"codec {codec} needs calibrated scales for {missing}; run codecs.calibrate first")
    head = onnx.ModelProto()
    head.CopyFrom(partition.head)
    tail = onnx.ModelProto()
    tail.CopyFrom(partition.tail)
    _ensure_opset(head, 10 if codec in QUANTIZED else 6, codec)
    _ensure_opset(tail, 10 if codec in QUANTIZED else 6, codec)
    taken = _all_names(head) | _all_names(tail)
    wire_dtype = _WIRE_DTYPE[codec]
    wire: list[TensorSpec] = []
    used: dict[str, QuantParams] = {}
    head_nodes: list[onnx.NodeProto] = []
    tail_nodes: list[onnx.NodeProto] = []
    renamed: dict[str, tuple[str, TensorSpec]] = {}
    for spec in specs:
        if spec.dtype != "float32":
            wire.append(spec)
            continue
        wire_name = _fresh_name(f"{spec.name}__{codec}", taken)
        wire_spec = TensorSpec(wire_name, wire_dtype, spec.shape)
        wire.append(wire_spec)
        renamed[spec.name] = (wire_name, wire_spec)
        if codec == "fp16":
            head_nodes.append(
                helper.make_node("Cast", [spec.name], [wire_name], to=TensorProto.FLOAT16, name=f"{wire_name}_encode")
            )
            tail_nodes.append(
                helper.make_node("Cast", [wire_name], [spec.name], to=TensorProto.FLOAT, name=f"{wire_name}_decode")
            )
            continue
        assert quant is not None
        params = quant[spec.name]
        used[spec.name] = params
        scale_name = _fresh_name(f"{spec.name}__scale", taken)
        zp_name = _fresh_name(f"{spec.name}__zero_point", taken)
        scale = numpy_helper.from_array(np.array(params.scale, dtype=np.float32), scale_name)
        zero_point = numpy_helper.from_array(np.array(params.zero_point, dtype=np.dtype(wire_dtype)), zp_name)
        for model in (head, tail):
            model.graph.initializer.extend([scale, zero_point])
        head_nodes.append(
            helper.make_node(
                "QuantizeLinear", [spec.name, scale_name, zp_name], [wire_name], name=f"{wire_name}_encode"
            )
        )
        tail_nodes.append(
            helper.make_node(
                "DequantizeLinear", [wire_name, scale_name, zp_name], [spec.name], name=f"{wire_name}_decode"
            )
        )
    head.graph.node.extend(head_nodes)
    for output in head.graph.output:
        if output.name in renamed:
            wire_name, wire_spec = renamed[output.name]
            output.CopyFrom(spec_value_info(wire_spec))
    tail_inputs = []
    for tail_input in tail.graph.input:
        if tail_input.name in renamed:
            tail_inputs.append(spec_value_info(renamed[tail_input.name][1]))
        else:
            tail_inputs.append(tail_input)
    del tail.graph.input[:]
    tail.graph.input.extend(tail_inputs)
    original_tail_nodes = list(tail.graph.node)
    del tail.graph.node[:]
    tail.graph.node.extend(tail_nodes + original_tail_nodes)
    return Encoded(codec, partition.cut, head, tail, tuple(wire), used)


def _check_samples(samples: Sequence[Sample], what: str) -> None:
    if len(samples) == 0:
        raise PlanError(
            f"the {what} set is empty; give an .npz with at least one sample per model input (--calibration)"
        )


def calibrate(
    partition: PartitionLike, samples: Sequence[Sample], codec: str = "int8", threads: int | None = 1
) -> dict[str, QuantParams]:
    """Per-tensor scale and zero point for each float32 crossing tensor, from the head's outputs on ``samples``.

    The range is the observed min/max widened to include 0 (so 0 is exact, as padding and ReLU need).
    """
    if codec not in QUANTIZED:
        raise PlanError(f"calibration is for {' and '.join(QUANTIZED)}, not {codec!r}")
    _check_samples(samples, "calibration")
    floats = [t.name for t in partition.cut.tensors if t.dtype == "float32"]
    if not floats:
        return {}
    session = make_session(partition.head, threads=threads)
    lo = dict.fromkeys(floats, 0.0)
    hi = dict.fromkeys(floats, 0.0)
    for sample in samples:
        values = session.run(floats, _feed(session, sample))
        for name, value in zip(floats, values, strict=True):
            array = np.asarray(value)
            if array.size == 0:
                continue
            if not np.all(np.isfinite(array)):
                raise PlanError(f"the crossing tensor {name!r} has non-finite values on a calibration sample")
            lo[name] = min(lo[name], float(array.min()))
            hi[name] = max(hi[name], float(array.max()))
    qmin, qmax = _QRANGE[codec]
    params: dict[str, QuantParams] = {}
    for name in floats:
        scale = (hi[name] - lo[name]) / (qmax - qmin)
        if not math.isfinite(scale) or scale <= 0.0:
            scale = 1.0
        scale = float(np.float32(scale))
        zero_point = int(np.clip(round(qmin - lo[name] / scale), qmin, qmax))
        params[name] = QuantParams(scale, zero_point)
    return params


def _feed(session: Any, sample: Sample) -> dict[str, np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in sample]
    if missing:
        raise PlanError(f"the samples lack the model input(s) {missing}; the .npz must hold one array per input")
    return {n: sample[n] for n in names}


def run_encoded(
    encoded: Encoded, samples: Sequence[Sample], threads: int | None = 1
) -> tuple[list[dict[str, np.ndarray]], int]:
    """Run head -> wire -> tail on each sample; return the outputs and the wire bytes of the first sample."""
    head = make_session(encoded.head, threads=threads)
    tail = make_session(encoded.tail, threads=threads)
    head_outputs = [o.name for o in head.get_outputs()]
    tail_outputs = [o.name for o in tail.get_outputs()]
    results: list[dict[str, np.ndarray]] = []
    wire_bytes = -1
    for sample in samples:
        wire = dict(zip(head_outputs, head.run(head_outputs, _feed(head, sample)), strict=True))
        if wire_bytes < 0:
            wire_bytes = sum(np.asarray(v).nbytes for v in wire.values())
        outputs = tail.run(tail_outputs, _feed(tail, wire))
        results.append(dict(zip(tail_outputs, outputs, strict=True)))
    return results, max(wire_bytes, 0)


def run_model(
    model: onnx.ModelProto, samples: Sequence[Sample], threads: int | None = 1
) -> list[dict[str, np.ndarray]]:
    session = make_session(model, threads=threads)
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(names, _feed(session, s)), strict=True)) for s in samples]


def is_classifier_output(value: np.ndarray) -> bool:
    return value.ndim >= 2 and value.shape[-1] > 1 and np.issubdtype(value.dtype, np.floating)


def compare_outputs(
    reference: Sequence[Mapping[str, np.ndarray]], candidate: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, Any]:
    """Fidelity of ``candidate`` against ``reference`` outputs, sample by sample.

    ``top1_agreement``: share of rows whose argmax over the last axis matches, over the
    classifier-like outputs (float, 2-D or more, last dim > 1); None when there are none.
    ``max_rel_error``: max |diff| / max |reference|; ``mean_rel_error``: mean |diff| / mean |reference|
    (normalised by the reference's magnitude, so values near zero do not blow it up).
    """
    agree = rows = 0
    max_rel = mean_rel = 0.0
    n_outputs = 0
    for ref, cand in zip(reference, candidate, strict=True):
        for name, ref_value in ref.items():
            r = np.asarray(ref_value, dtype=np.float64)
            c = np.asarray(cand[name], dtype=np.float64)
            diff = np.abs(r - c)
            if r.size:
                max_rel = max(max_rel, float(diff.max() / max(np.abs(r).max(), 1e-12)))
                mean_rel = max(mean_rel, float(diff.mean() / max(np.abs(r).mean(), 1e-12)))
            n_outputs += 1
            if is_classifier_output(np.asarray(ref_value)):
                a = r.reshape(-1, r.shape[-1]).argmax(axis=1)
                b = c.reshape(-1, c.shape[-1]).argmax(axis=1)
                agree += int((a == b).sum())
                rows += a.size
    return {
        "samples": len(reference),
        "top1_agreement": (agree / rows) if rows else None,
        "max_rel_error": max_rel,
        "mean_rel_error": mean_rel,
    }


def label_accuracy(outputs: Sequence[Mapping[str, np.ndarray]], labels: np.ndarray) -> float | None:
    """Share of samples whose first classifier output's argmax equals the label; None if no classifier output."""
    predictions: list[int] = []
    for sample_outputs in outputs:
        value = next((np.asarray(v) for v in sample_outputs.values() if is_classifier_output(np.asarray(v))), None)
        if value is None:
            return None
        predictions.extend(value.reshape(-1, value.shape[-1]).argmax(axis=1).tolist())
    flat = np.asarray(labels).reshape(-1)
    if flat.size != len(predictions):
        raise PlanError(
            f"the labels have {flat.size} entries but the samples give {len(predictions)} predictions; "
            "store one label per sample under the key 'labels'"
        )
    return float((np.asarray(predictions) == flat).mean())


def fidelity(
    model: onnx.ModelProto,
    encoded: Encoded,
    calibration: Sequence[Sample],
    held_out: Sequence[Sample] = (),
    threads: int | None = 1,
    reference: Mapping[str, Sequence[Mapping[str, np.ndarray]]] | None = None,
) -> dict[str, Any]:
    """Bytes per sample and agreement with the fp32 model on the calibration and held-out samples.

    ``reference`` may hold the full model's outputs precomputed (keys "calibration", "held_out").
    """
    _check_samples(calibration, "calibration")
    report: dict[str, Any] = {"codec": encoded.codec}
    wire_bytes = 0
    for key, samples in (("calibration", calibration), ("held_out", held_out)):
        if not samples:
            continue
        ref = reference[key] if reference is not None else run_model(model, samples, threads)
        outputs, wire_bytes_here = run_encoded(encoded, samples, threads)
        wire_bytes = wire_bytes or wire_bytes_here
        report[key] = compare_outputs(ref, outputs)
    report["bytes_per_sample"] = wire_bytes
    return report
