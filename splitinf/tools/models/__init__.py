"""Models shipped with splitinf: a digits classifier pair, and a ResNet-50-like benchmark builder.

The pair is trained on scikit-learn's bundled handwritten digits (8x8 grey images, values 0..16)
by ``scripts/train_digits.py``, which also writes the held-out split and ``digits.json``
(split, accuracies, parameter counts, file hashes):

- ``digits_main.onnx``: a small residual CNN; its skip connections give real cut choices.
- ``digits_fallback.onnx``: far smaller, faster and less accurate; the device answers from it
  when the network fails. Same input and output as the main model.

Both take ``image`` float32 ``[batch, 1, 8, 8]`` in [0, 1] (see :func:`preprocess`) and return
``logits`` float32 ``[batch, 10]``. The benchmark model lives in :mod:`splitinf.tools.models.resnet`.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from splitinf.errors import InputError

__all__ = [
    "DIGITS_INPUT",
    "DIGITS_OUTPUT",
    "digits_fallback_path",
    "digits_info",
    "digits_main_path",
    "load_digits_test",
    "preprocess",
]

DIGITS_INPUT = "image"
DIGITS_OUTPUT = "logits"
PIXEL_MAX = 16

_MAIN_FILE = "digits_main.onnx"
_FALLBACK_FILE = "digits_fallback.onnx"
_INFO_FILE = "digits.json"
_TEST_FILE = "digits_test.npz"


def _package_file(name: str) -> Path:
    # The package is installed as plain files (wheel or editable), so the traversable is a real path;
    # onnxruntime and the partitioner want a filesystem path, not a stream.
    path = Path(str(resources.files(__name__).joinpath(name)))
    if not path.is_file():
        raise FileNotFoundError(
            f"{name} is missing from {path.parent}; reinstall splitinf or regenerate it with "
            "`python scripts/train_digits.py`"
        )
    return path


def digits_main_path() -> Path:
    """Path of the shipped main digits model (residual CNN)."""
    return _package_file(_MAIN_FILE)


def digits_fallback_path() -> Path:
    """Path of the shipped fallback digits model (small, fast, less accurate)."""
    return _package_file(_FALLBACK_FILE)


def digits_info() -> dict[str, Any]:
    """The record written by the training script: split, accuracies, parameter counts, sha256s."""
    info: dict[str, Any] = json.loads(_package_file(_INFO_FILE).read_text(encoding="utf-8"))
    return info


def preprocess(images: np.ndarray) -> np.ndarray:
    """Digits images with values 0..16, shaped ``[N, 8, 8]`` or ``[N, 1, 8, 8]``, as model input.

    Returns float32 ``[N, 1, 8, 8]`` scaled to [0, 1].
    """
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[:, np.newaxis]
    if array.ndim != 4 or array.shape[1:] != (1, 8, 8):
        raise InputError(
            f"digits images must be shaped [N, 8, 8] or [N, 1, 8, 8], got {list(np.shape(images))}; "
            "pass a batch of 8x8 images"
        )
    if array.size and (array.min() < 0 or array.max() > PIXEL_MAX):
        raise InputError(
            f"digits pixel values must lie in 0..{PIXEL_MAX} (scikit-learn's load_digits scale), "
            f"got {array.min()}..{array.max()}; do not pass already-scaled images"
        )
    scaled: np.ndarray = array.astype(np.float32) / np.float32(PIXEL_MAX)
    return scaled


def load_digits_test() -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits: model input float32 ``[M, 1, 8, 8]`` in [0, 1], and int64 labels ``[M]``."""
    with np.load(_package_file(_TEST_FILE), allow_pickle=False) as data:
        images = data["images"]
        labels = data["labels"].astype(np.int64)
    return preprocess(images), labels
