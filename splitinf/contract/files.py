"""Output directories written whole or not at all: build beside the target, then swap it in.

:func:`atomic_directory` is what writers use (the planner's plan directory, the partitioner's
exports and repository versions); :func:`publish_directory` is its last step, the swap.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from splitinf.errors import OutputError

__all__ = ["atomic_directory", "publish_directory"]


def publish_directory(build: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move the finished directory ``build`` to ``target``, replacing what is there.

    The old ``target`` is moved aside first and deleted only once ``build`` is in place; if
    moving ``build`` in fails, the old ``target`` is put back (rollback), so a failure leaves
    the old output, never none. Both must be on one file system (build beside the target).
    """
    build, target = Path(build), Path(target)
    aside = None
    try:
        if target.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, aside / "previous")
        try:
            os.replace(build, target)
        except OSError:
            if aside is not None:
                os.replace(aside / "previous", target)
            raise
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}; choose a writable directory") from exc
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str], ours: Sequence[str]) -> Iterator[Path]:
    """Yield a fresh directory beside ``target`` to build in; on success it replaces ``target``.

    An existing ``target`` is replaced only when it is empty or holds one of the files ``ours``
    (an earlier output of the same writer); anything else is refused with an OutputError. On
    any failure the build directory is removed and ``target`` is left as it was; an OSError
    becomes an OutputError naming the target.
    """
    target = Path(target)
    parent = target.parent
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target} exists and is not a directory; choose another output directory")
    if target.is_dir() and any(target.iterdir()) and not any((target / f).is_file() for f in ours):
        raise OutputError(
            f"{target} exists and holds files that splitinf did not write; choose a new or empty directory"
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write into {parent}: {exc.strerror or exc}; choose a writable directory") from exc
    try:
        try:
            yield build
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}; choose a writable directory") from exc
        publish_directory(build, target)
    finally:
        shutil.rmtree(build, ignore_errors=True)
