"""Atomic writes and directory publishing: a reader sees the old or the new, and a failed swap restores the old."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from splitinf.contract import files
from splitinf.contract.files import publish_directory, sha256_file, staged_directory, write_json_atomic
from splitinf.errors import OutputError


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_json_atomic_replaces_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "plan.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2} and target.read_text().endswith("}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
    assert sha256_file(target) == hashlib.sha256(target.read_bytes()).hexdigest()


def test_write_json_atomic_into_a_missing_directory_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="cannot write"):
        write_json_atomic(tmp_path / "missing" / "plan.json", {})


def test_publish_directory_replaces_the_old_one(tmp_path: Path) -> None:
    final, new = tmp_path / "out", tmp_path / "new"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    publish_directory(new, final)
    assert _tree(final) == {"new.txt": "new"} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_swap_puts_the_old_directory_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final, new = tmp_path / "out", tmp_path / "new"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new.mkdir()
    real_replace = os.replace

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(src) == new:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        publish_directory(new, final)
    assert _tree(final) == {"old.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]  # nothing left aside


def test_staged_directory_publishes_on_success_and_leaves_the_target_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "part"
    with staged_directory(target) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert _tree(target) == {"manifest.json": "{}"}
    with pytest.raises(RuntimeError), staged_directory(target) as tmp:
        (tmp / "manifest.json").write_text('{"half": true}')
        raise RuntimeError("export failed")
    assert _tree(target) == {"manifest.json": "{}"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part"]


def test_staged_directory_refuses_to_replace_what_it_did_not_write(tmp_path: Path) -> None:
    target = tmp_path / "photos"
    target.mkdir()
    (target / "cat.jpg").write_text("meow")
    with pytest.raises(OutputError, match="files that splitinf did not write"), staged_directory(target):
        pass
    assert _tree(target) == {"cat.jpg": "meow"}


def test_when_the_old_directory_cannot_be_moved_aside_nothing_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final, new = tmp_path / "out", tmp_path / "new"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new.mkdir()

    def refusing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files.os, "replace", refusing_replace)
    with pytest.raises(PermissionError):
        publish_directory(new, final)
    assert _tree(final) == {"old.txt": "old"} and sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]
