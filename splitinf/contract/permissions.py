"""Permissions of what splitinf writes: plans, split outputs and profiles are readable by other users.

``tempfile`` creates files 0600 and directories 0700, so a plan built in a temporary directory
and then moved into place could be read by no one but its writer (a plan copied as root could not
be read by the device service's own user). Everything splitinf publishes is set to the modes a
plain ``open``/``mkdir`` would give, 0644 and 0755 under the usual umask 022; a user who wants
private outputs asks for them with ``umask 077``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["published_modes", "share_tree"]


def _umask() -> int:
    try:  # Linux >= 4.7 reports it without changing it
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def published_modes() -> tuple[int, int]:
    """(file mode, directory mode) for published outputs: 0666 and 0777 less the process umask."""
    mask = _umask()
    return 0o666 & ~mask, 0o777 & ~mask


def share_tree(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (a file, or a directory and everything under it) the ``published_modes()``."""
    file_mode, dir_mode = published_modes()
    root = Path(path)
    if not root.is_dir():
        os.chmod(root, file_mode)
        return
    os.chmod(root, dir_mode)
    for parent, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(parent, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(parent, name), file_mode)
