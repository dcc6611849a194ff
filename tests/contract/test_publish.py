"""Output directories written whole or not at all (splitinf.contract.files), with rollback."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitinf.contract.files import staged_directory
from splitinf.errors import OutputError


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_finished_build_replaces_the_old_output(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with staged_directory(target, ours=("plan.json",)) as build:
        (build / "plan.json").write_text("1")
    with staged_directory(target, ours=("plan.json",)) as build:
        (build / "plan.json").write_text("2")
    assert (target / "plan.json").read_text() == "2" and leftovers(tmp_path) == []


def test_a_failed_build_leaves_the_old_output_and_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "plan.json").write_text("old")
    with pytest.raises(OutputError, match="No space left"), staged_directory(target, ours=("plan.json",)) as build:
        (build / "plan.json").write_text("new")
        raise OSError(28, "No space left on device")
    with pytest.raises(KeyError), staged_directory(target, ours=("plan.json",)):
        raise KeyError("a bug, not an I/O error: passes through unchanged")
    assert (target / "plan.json").read_text() == "old" and leftovers(tmp_path) == []


def test_a_directory_of_other_files_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "notes"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="did not write"), staged_directory(target, ours=("plan.json",)):
        pass
    assert (target / "notes.txt").read_text() == "keep me"
