"""What splitinf publishes (splits, repositories, plans, profiles) is readable by other users,
or private when the user's umask asks for it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest

from splitinf.contract.files import write_json_atomic
from splitinf.contract.permissions import published_modes, share_tree
from splitinf.offline.partition import export_partition, write_to_repository
from splitinf.tools.testing.graphs import mlp


def modes(root: Path) -> set[tuple[str, int]]:
    found = {("dir", stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        found.add(("dir" if path.is_dir() else "file", stat.S_IMODE(path.stat().st_mode)))
    return found


@pytest.fixture
def umask() -> Iterator[object]:
    previous = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(previous)


def test_published_outputs_are_0644_and_0755_under_the_usual_umask(tmp_path: Path, umask: object) -> None:
    model = tmp_path / "model.onnx"
    onnx.save_model(mlp(batch=1), model)
    export_partition(model, "relu_0", tmp_path / "split")
    write_to_repository(mlp(batch=1), tmp_path / "repo", "tail")
    write_json_atomic(tmp_path / "profile.json", {"a": 1})
    assert modes(tmp_path / "split") == {("dir", 0o755), ("file", 0o644)}
    assert modes(tmp_path / "repo") == {("dir", 0o755), ("file", 0o644)}
    assert stat.S_IMODE((tmp_path / "profile.json").stat().st_mode) == 0o644


def test_umask_077_keeps_them_private(tmp_path: Path, umask: object) -> None:
    os.umask(0o077)
    assert published_modes() == (0o600, 0o700)
    model = tmp_path / "model.onnx"
    onnx.save_model(mlp(batch=1), model)
    export_partition(model, "relu_0", tmp_path / "split")
    assert modes(tmp_path / "split") == {("dir", 0o700), ("file", 0o600)}


def test_share_tree_fixes_a_tree_made_by_tempfile(tmp_path: Path, umask: object) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    for path in (tmp_path / "a", tmp_path / "a" / "b"):
        path.chmod(0o700)
    (tmp_path / "a" / "b" / "f").chmod(0o600)
    share_tree(tmp_path / "a")
    assert modes(tmp_path / "a") == {("dir", 0o755), ("file", 0o644)}
