"""int8 variants of the models a device runs (heads and the fallback), made by ``onnxruntime.quantization``.

The device's share of a model costs memory and time; 8-bit weights are 4x smaller and, where the
CPU has integer dot-product instructions (ARMv8.2 dot product on a Pi 5, VNNI on x86), the integer
kernels are faster. Nothing here is a hand-written quantizer: the graph goes through
onnxruntime's pre-processing (:func:`~onnxruntime.quantization.shape_inference.quant_pre_process`:
symbolic shape inference when sympy is installed, ONNX shape inference, basic graph optimisation),
then one of its two quantizers:

- ``static`` (models with convolutions, the default): :func:`~onnxruntime.quantization.quantize_static`
  in QDQ format (QuantizeLinear/DequantizeLinear around each quantized op, which any onnxruntime
  fuses into integer kernels and which stays an ordinary ONNX graph), uint8 activations calibrated
  by min/max on the plan's calibration samples, int8 weights per output channel where the op allows
  it (Conv, Gemm, MatMul; opset 13 or later) and per tensor elsewhere. U8S8 is what onnxruntime
  recommends for CPUs.
- ``dynamic`` (MatMul-heavy models: transformers and RNNs, which have no convolutions and whose
  activations vary too much per input for fixed scales):
  :func:`~onnxruntime.quantization.quantize_dynamic`, int8 weights, activation scales computed per
  request; no calibration.

``reduce_range`` (7-bit weights) is off: onnxruntime advises it only for x86 CPUs with AVX2/AVX-512
but without VNNI, where U8S8 products can saturate; ARM devices and VNNI CPUs do not need it.

The graph's inputs and outputs keep their names and float types, so a quantized head feeds the
same wire codec and the same fp32 tail as its fp32 twin. A head without weighted ops (the input
cut's, or one of only pooling and activations) has nothing to quantize and gets no int8 variant.

A device holds each weight once, int8 ones too: the planner's int8 heads are chains of int8
segments (:class:`Int8Chain`), the model cut at every cut weighed, each segment with weights
quantized alone (with the whole model's method, calibrated on the fp32 activations that feed it)
and each without weights left fp32. The int8 head at a cut is the int8 chain up to it, then its
codec's graph; the fallback is quantized whole (:func:`quantize_model`).
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from splitinf.errors import PlanError
from splitinf.offline.graph import Cut, GraphView
from splitinf.offline.segments import chain_segments, last_uses, segment_model
from splitinf.offline.sessions import make_session

__all__ = [
    "PRECISIONS",
    "Int8Chain",
    "Int8Segment",
    "QuantizedChain",
    "QuantizedModel",
    "QuantizeMethod",
    "SampleReader",
    "has_weights",
    "parse_quantize",
    "quantize_method",
    "quantize_model",
]

PRECISIONS = ("fp32", "int8")
QuantizeMethod = Literal["static", "dynamic"]

# Ops whose weights int8 shrinks and whose integer kernels onnxruntime has.
_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "Attention"})
_CONV_OPS = frozenset({"Conv", "ConvTranspose"})
_MATMUL_HEAVY_OPS = frozenset({"MatMul", "LSTM", "GRU", "Attention"})
_PER_CHANNEL_OPSET = 13  # DequantizeLinear's axis attribute
# onnxruntime's symbolic shape inference (for dynamic dimensions) needs sympy; ONNX's own inference runs without it.
_HAS_SYMPY = importlib.util.find_spec("sympy") is not None

Sample = Mapping[str, np.ndarray]


def parse_quantize(text: str | None) -> str | None:
    """``--quantize`` as given (None, "", "none" or "fp32": no variants) -> None or "int8"."""
    if text is None or text.strip().lower() in ("", "none", "fp32"):
        return None
    value = text.strip().lower()
    if value != "int8":
        raise PlanError(f"--quantize takes int8 (or none), got {text!r}")
    return value


def _nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return list(model.graph.node)


def has_weights(model: onnx.ModelProto) -> bool:
    """Whether the model has an op worth quantizing (a convolution, a matrix product, a recurrent layer)."""
    return any(node.op_type in _WEIGHTED_OPS for node in _nodes(model))


def quantize_method(model: onnx.ModelProto) -> QuantizeMethod:
    """``static`` for models with convolutions or only Gemm layers; ``dynamic`` for MatMul-heavy ones
    (MatMul, attention or recurrent layers and no convolution), as onnxruntime's guide advises."""
    ops = {node.op_type for node in _nodes(model)}
    if not ops & _CONV_OPS and ops & _MATMUL_HEAVY_OPS:
        return "dynamic"
    return "static"


class SampleReader:
    """The calibration samples as onnxruntime's ``CalibrationDataReader`` wants them: one feed at a time,
    each holding the model's inputs only (a head may need fewer inputs than the full model)."""

    def __init__(self, samples: Sequence[Sample], input_names: Sequence[str]) -> None:
        missing = sorted({n for s in samples for n in input_names if n not in s})
        if missing:
            raise PlanError(f"the calibration samples lack the input(s) {missing}; the .npz must hold one per input")
        self._feeds: Iterator[dict[str, np.ndarray]] = iter([{n: s[n] for n in input_names} for s in samples])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # onnxruntime's reader interface; one pass is all calibration makes
        pass

    def __len__(self) -> int:  # pragma: no cover - onnxruntime only asks when the reader offers it
        return 0


@dataclass(frozen=True)
class QuantizedModel:
    """An int8 model and how it was made (recorded in the plan beside its fidelity)."""

    model: onnx.ModelProto
    method: QuantizeMethod
    per_channel: bool
    calibration_samples: int

    def describe(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "precision": "int8",
            "tool": "onnxruntime.quantization",
            "method": self.method,
            "reduce_range": False,
            "symbolic_shape_inference": _HAS_SYMPY,
        }
        if self.method == "static":
            record.update(
                format="QDQ",
                activations="uint8",
                weights="int8 per-channel" if self.per_channel else "int8 per-tensor",
                calibration="minmax",
                calibration_samples=self.calibration_samples,
            )
        else:
            record.update(weights="int8", activations="per-request (dynamic)")
        return record


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _input_names(model: onnx.ModelProto) -> list[str]:
    initializers = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def _without_unused_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the opset imports no node uses: the pre-processing's optimiser saves every domain it knows
    (training, preview, ATen...), which other ONNX tools may refuse."""
    used = {"", "ai.onnx"} | {n.domain for n in model.graph.node} | {f.domain for f in model.functions}
    used |= {n.domain for f in model.functions for n in f.node}
    kept = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


def quantize_model(
    model: onnx.ModelProto,
    samples: Sequence[Sample],
    *,
    method: QuantizeMethod | None = None,
) -> QuantizedModel:
    """The int8 variant of ``model`` (see the module docstring); ``samples`` calibrate a static one.

    ``method`` defaults to :func:`quantize_method`'s choice. Inputs and outputs keep their names.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    chosen = method or quantize_method(model)
    if chosen == "static" and not samples:
        raise PlanError("static int8 quantization calibrates on sample inputs; give --samples FILE.npz")
    per_channel = _opset(model) >= _PER_CHANNEL_OPSET
    try:
        with tempfile.TemporaryDirectory(prefix="splitinf-quantize-") as tmp:
            source, prepared, output = (Path(tmp) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
            # from a file: given a ModelProto, quant_pre_process moves the caller's weights to external data
            onnx.save(model, str(source))
            quant_pre_process(source, prepared, skip_symbolic_shape=not _HAS_SYMPY)
            if chosen == "static":
                quantize_static(
                    prepared,
                    output,
                    SampleReader(samples, _input_names(model)),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    reduce_range=False,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    calibration_providers=["CPUExecutionProvider"],
                )
            else:
                quantize_dynamic(prepared, output, per_channel=per_channel, weight_type=QuantType.QInt8)
            quantized = _without_unused_opsets(onnx.load(str(output)))
    except PlanError:
        raise
    except Exception as exc:  # onnxruntime's quantizer raises bare exceptions of many kinds
        raise PlanError(
            f"onnxruntime could not quantize the model to int8 ({type(exc).__name__}: {exc}); "
            "plan without --quantize, or check the model with `python -m onnxruntime.quantization.preprocess`"
        ) from exc
    return QuantizedModel(quantized, chosen, per_channel and chosen == "static", len(samples))


@dataclass(frozen=True)
class Int8Segment:
    """One segment of an int8 chain as the device runs it: its int8 twin, or the fp32 segment itself when it
    has no weights to quantize (``quantization`` None)."""

    end: str  # the cut id the segment ends at
    data: bytes  # the serialised model, written to the plan as it was measured
    quantization: Mapping[str, Any] | None  # how the twin was made (QuantizedModel.describe())


@dataclass(frozen=True)
class QuantizedChain:
    """The int8 chain built by :class:`Int8Chain`: its segments (those the cuts asked for) and, per cut, how many
    segments its head runs."""

    segments: tuple[Int8Segment, ...]
    reach: Mapping[str, int]

    def up_to(self, cut_id: str) -> tuple[Int8Segment, ...]:
        return self.segments[: self.reach[cut_id]]


class Int8Chain:
    """The int8 twins of a chain of segments (:mod:`splitinf.offline.segments`), made and run one segment at a time.

    The model is cut into segments at ``cuts``, the same for every cut, so a head's int8 segments do not depend on
    which heads end up held: the int8 head at a cut is the int8 segments up to it, each weight quantized once.
    Each segment with weights is quantized alone by :func:`quantize_model` with the whole model's ``method``,
    calibrated on the fp32 activations that feed it (the fp32 segments run on ``calibration``); one without
    weights stays fp32. :meth:`head` walks the chain to a cut (cuts in chain order) and gives the cut tensors
    the int8 chain makes for each sample set of ``evaluation``: what the device's int8 head computes.
    """

    def __init__(
        self,
        view: GraphView,
        cuts: Sequence[Cut],
        calibration: Sequence[Sample],
        evaluation: Mapping[str, Sequence[Sample]],
        *,
        method: QuantizeMethod,
        threads: int | None = 1,
    ) -> None:
        self._view = view
        self._cuts = {cut.id: cut for cut in cuts}
        self._chain, self.reach = chain_segments(view, cuts, to_outputs=False)
        self._method: QuantizeMethod = method
        self._threads = threads
        self._fp32 = [dict(s) for s in calibration]  # the fp32 activations, to calibrate the next segment on
        self._int8 = {key: [dict(s) for s in samples] for key, samples in evaluation.items()}
        self._last_use = last_uses(self._chain, cuts, self.reach)
        self.segments: list[Int8Segment] = []

    def head(self, cut_id: str) -> dict[str, list[dict[str, np.ndarray]]] | None:
        """Per sample set, the tensors of cut ``cut_id`` as the int8 chain makes them; None when no segment
        before it has weights (no int8 head). Cuts are asked for in chain order (their reach never decreases)."""
        reach = self.reach[cut_id]
        if reach < len(self.segments):
            raise PlanError(f"cut {cut_id} was asked for after a later cut of the int8 chain")
        while len(self.segments) < reach:
            self._step()
        if all(s.quantization is None for s in self.segments[:reach]):
            return None
        names = self._cuts[cut_id].names
        return {key: [{n: v[n] for n in names} for v in values] for key, values in self._int8.items()}

    def result(self) -> QuantizedChain:
        return QuantizedChain(tuple(self.segments), dict(self.reach))

    def _step(self) -> None:
        """Quantize the next segment, then run it (fp32 on the calibration activations, the twin on the int8 ones)."""
        index = len(self.segments)
        for values in [*self._fp32, *self._all_int8()]:
            for name in [n for n in values if self._last_use.get(n, index) < index]:
                del values[name]  # read by no segment or cut from here on
        segment = self._chain[index]
        fp32 = segment_model(self._view, segment)
        feeds = [{n: v[n] for n in segment.inputs} for v in self._fp32]
        twin = quantize_model(fp32, feeds, method=self._method) if has_weights(fp32) else None
        data = fp32.SerializeToString() if twin is None else twin.model.SerializeToString()
        self.segments.append(Int8Segment(segment.end, data, None if twin is None else twin.describe()))
        for model, samples in ((fp32.SerializeToString(), self._fp32), (data, self._all_int8())):
            session = make_session(model, self._threads)
            outputs = [o.name for o in session.get_outputs()]
            for values in samples:
                feed = {i.name: values[i.name] for i in session.get_inputs()}
                values.update(zip(outputs, session.run(outputs, feed), strict=True))

    def _all_int8(self) -> list[dict[str, np.ndarray]]:
        return [v for values in self._int8.values() for v in values]
