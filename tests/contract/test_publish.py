"""Output directories written whole or not at all (splitinf.contract.files), with rollback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from splitinf.contract import files
from splitinf.contract.files import atomic_directory, publish_directory
from splitinf.errors import OutputError


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_finished_build_replaces_the_old_output(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_directory(target, ours=("plan.json",)) as build:
        (build / "plan.json").write_text("1")
    with atomic_directory(target, ours=("plan.json",)) as build:
        (build / "plan.json").write_text("2")
    assert (target / "plan.json").read_text() == "2" and leftovers(tmp_path) == []


def test_a_failed_build_leaves_the_old_output_and_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "plan.json").write_text("old")
    with pytest.raises(OutputError, match="No space left"), atomic_directory(target, ours=("plan.json",)) as build:
        (build / "plan.json").write_text("new")
        raise OSError(28, "No space left on device")
    with pytest.raises(KeyError), atomic_directory(target, ours=("plan.json",)):
        raise KeyError("a bug, not an I/O error: passes through unchanged")
    assert (target / "plan.json").read_text() == "old" and leftovers(tmp_path) == []


def test_a_directory_of_other_files_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "notes"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="did not write"), atomic_directory(target, ours=("plan.json",)):
        pass
    assert (target / "notes.txt").read_text() == "keep me"


def test_when_the_swap_fails_the_old_output_is_put_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target, build = tmp_path / "out", tmp_path / ".out.build"
    target.mkdir()
    (target / "plan.json").write_text("old")
    build.mkdir()
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(src) == build:
            raise OSError(18, "Invalid cross-device link")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(OutputError, match="cross-device"):
        publish_directory(build, target)
    assert (target / "plan.json").read_text() == "old"
    assert leftovers(tmp_path) == [".out.build"]  # the caller's build, which atomic_directory removes
