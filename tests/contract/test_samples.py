"""Sample files (splitinf.contract.samples): one reader for verification, calibration and held-out sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from splitinf.contract.samples import read_samples
from splitinf.contract.tensors import TensorSpec
from splitinf.errors import InputError

X = TensorSpec("x", "float32", ("N", 4))
IDS = TensorSpec("ids", "int64", ("N", 2))


def test_an_array_of_the_input_rank_is_samples_along_its_first_axis(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", x=np.arange(12, dtype=np.float64).reshape(3, 4), labels=np.array([0, 1, 2]))
    samples, labels = read_samples(tmp_path / "s.npz", [X])
    assert [s["x"].shape for s in samples] == [(1, 4)] * 3 and samples[2]["x"].dtype == np.float32
    np.testing.assert_array_equal(samples[1]["x"], [[4, 5, 6, 7]])
    assert labels is not None and labels.tolist() == [0, 1, 2]


def test_one_rank_more_is_samples_stacked_and_a_fixed_batch_is_kept(tmp_path: Path) -> None:
    np.savez(tmp_path / "stacked.npz", x=np.zeros((2, 1, 4), np.float32))
    assert [s["x"].shape for s in read_samples(tmp_path / "stacked.npz", [X])[0]] == [(1, 4)] * 2
    fixed = TensorSpec("x", "float32", (2, 4))
    np.savez(tmp_path / "pairs.npz", x=np.zeros((6, 4), np.float32))
    assert [s["x"].shape for s in read_samples(tmp_path / "pairs.npz", [fixed])[0]] == [(2, 4)] * 3
    np.savez(tmp_path / "odd.npz", x=np.zeros((5, 4), np.float32))
    with pytest.raises(InputError, match=r"a multiple of 2"):
        read_samples(tmp_path / "odd.npz", [fixed])


def test_a_directory_of_npz_and_npy_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.ones((2, 4), np.float32), ids=np.ones((2, 2), np.int64))
    np.save(tmp_path / "x.npy", np.full((1, 4), 3.0, np.float32))
    np.save(tmp_path / "ids.npy", np.zeros((1, 2), np.int32))
    samples, labels = read_samples(tmp_path, [X, IDS])
    assert len(samples) == 3 and labels is None
    assert samples[2]["ids"].dtype == np.int64 and samples[2]["x"][0, 0] == 3.0


def test_mismatches_are_named(tmp_path: Path) -> None:
    np.savez(tmp_path / "wrong.npz", image=np.zeros((2, 4), np.float32))
    with pytest.raises(InputError, match=r"missing \['x'\], unknown \['image'\]"):
        read_samples(tmp_path / "wrong.npz", [X])
    np.savez(tmp_path / "labels.npz", x=np.zeros((2, 4), np.float32), labels=np.array([1, 2, 3]))
    with pytest.raises(InputError, match="one label per sample"):
        read_samples(tmp_path / "labels.npz", [X])
    np.savez(tmp_path / "floats.npz", x=np.zeros((2, 4), np.float32), ids=np.zeros((2, 2), np.float32))
    with pytest.raises(InputError, match="'ids' is float32, the model input is int64"):
        read_samples(tmp_path / "floats.npz", [X, IDS])
    np.savez(tmp_path / "uneven.npz", x=np.zeros((2, 4), np.float32), ids=np.zeros((3, 2), np.int64))
    with pytest.raises(InputError, match="different numbers of samples"):
        read_samples(tmp_path / "uneven.npz", [X, IDS])
    np.savez(tmp_path / "rank.npz", x=np.zeros(4, np.float32))
    with pytest.raises(InputError, match=r"has shape \[4\], the input is \['N', 4\]"):
        read_samples(tmp_path / "rank.npz", [X])


def test_nothing_is_unpickled_and_missing_paths_are_named(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    np.save(pickled / "x.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="cannot read"):
        read_samples(pickled, [X])  # object arrays need pickle, which we never load
    with pytest.raises(InputError, match="do not exist"):
        read_samples(tmp_path / "missing", [X])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no .npy or .npz files"):
        read_samples(tmp_path / "empty", [X])
    np.savez(tmp_path / "none.npz", x=np.zeros((0, 4), np.float32))
    with pytest.raises(InputError, match="empty"):
        read_samples(tmp_path / "none.npz", [X])


def test_a_scalar_input_is_stacked_one_value_per_sample(tmp_path: Path) -> None:
    rate = TensorSpec("sr", "int64", ())
    np.savez(tmp_path / "s.npz", sr=np.array([16000, 8000]), x=np.zeros((2, 4), np.float32))
    samples, _ = read_samples(tmp_path / "s.npz", [rate, X])
    assert [s["sr"].shape for s in samples] == [(), ()] and int(samples[1]["sr"]) == 8000
