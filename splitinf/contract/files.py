"""Files that readers never see half-written: atomic file writes, directory publishing, sha256.

``staged_directory`` is how a directory of outputs (a partition, a model version, a plan) is
written: build it in a temporary directory beside the target, then ``publish_directory``
swaps it in. A reader sees the old directory or the new one; when the swap fails the old one
is put back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePath
from typing import Any

from splitinf.contract.permissions import published_modes, share_tree
from splitinf.errors import OutputError

__all__ = [
    "publish_directory",
    "resolves_inside",
    "sha256_file",
    "staged_directory",
    "stays_inside",
    "write_json_atomic",
    "write_text_atomic",
]


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` so that readers see the old file or the new one, never a part."""
    target = Path(path)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.fchmod(fd, published_modes()[0])  # mkstemp's 0600 would hide it from other users
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}; choose a writable location") from exc


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON (indented, one trailing newline) atomically."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def publish_directory(tmp_dir: str | os.PathLike[str], final_dir: str | os.PathLike[str]) -> None:
    """Replace ``final_dir`` by ``tmp_dir`` (same file system); on failure ``final_dir`` is as it was.

    An existing ``final_dir`` is first renamed aside, then ``tmp_dir`` renamed into place, then
    the old one removed. If the second rename fails, the old directory is renamed back.
    """
    source, target = Path(tmp_dir), Path(final_dir)
    share_tree(source)  # mkdtemp made it 0700: a plan or split must be readable by the service's user
    aside: Path | None = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)) / "previous"
        try:
            os.replace(target, aside)
        except OSError:
            aside.parent.rmdir()
            raise
    try:
        os.replace(source, target)
    except OSError:
        if aside is not None:
            os.replace(aside, target)
            aside.parent.rmdir()
        raise
    if aside is not None:
        shutil.rmtree(aside.parent, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike[str], ours: Sequence[str] = ("manifest.json",)) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; when the block succeeds it replaces ``target``.

    An existing ``target`` is replaced only when it is empty or holds one of the files ``ours``
    (an earlier output of ours); anything else is refused with ``OutputError``. On any failure
    the temporary directory is removed and ``target`` is left as it was.
    """
    final = Path(target)
    parent = final.parent
    if final.exists() and not final.is_dir():
        raise OutputError(f"{final} exists and is not a directory; choose another output directory")
    if final.is_dir() and any(final.iterdir()) and not any((final / f).is_file() for f in ours):
        raise OutputError(
            f"{final} exists and holds files that splitinf did not write; choose a new or empty directory"
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write into {parent}: {exc.strerror or exc}; choose a writable directory") from exc
    try:
        yield tmp
        publish_directory(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write {final}: {exc.strerror or exc}; choose a writable directory") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolves_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path``, symlinks followed, is ``folder`` (symlinks followed too) or lies under it."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def stays_inside(folder: str | os.PathLike[str], relative: str) -> bool:
    """Whether ``relative`` names a path inside ``folder``: not absolute, no ``..``, no symlink leaving it.

    The one rule for the files a plan directory or a model repository may open (plan entries,
    external-data locations)."""
    pure = PurePath(relative)
    return not pure.is_absolute() and ".." not in pure.parts and resolves_inside(Path(folder) / pure, folder)
