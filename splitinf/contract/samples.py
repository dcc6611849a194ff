"""Sample inputs on disk: the one reader of ``.npz`` files of arrays named by model input."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["read_npz"]


def read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, never unpickled.

    OSError when it cannot be read; ValueError when it is not an ``.npz``: a single ``.npy`` array
    names no model input, so it is refused with that reason rather than guessed at.
    """
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError("it holds one array (.npy), not an .npz")
    with loaded as data:
        return {name: data[name] for name in data.files}
