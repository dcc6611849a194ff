"""A CPU limit for the emulated device: a uniquely named child cgroup with a CFS quota.

cgroup v1 (the ``cpu`` controller mounted at ``/sys/fs/cgroup/cpu``): ``cpu.cfs_quota_us`` and
``cpu.cfs_period_us``. cgroup v2 (``/sys/fs/cgroup/cgroup.controllers`` exists): ``cpu.max``
("QUOTA PERIOD"), after enabling ``+cpu`` in the parent's ``cgroup.subtree_control``.

A process joins by writing its pid to the child's ``cgroup.procs``; :func:`join_command`
gives a ``preexec_fn`` that does it in the forked child before ``exec``, so every thread
the device process ever starts is limited from its first instruction.
"""

from __future__ import annotations

import errno
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitinf.errors import UsageError

__all__ = ["CpuCgroup", "create_cpu_cgroup", "detect_cgroup_version"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def detect_cgroup_version(root: Path = CGROUP_ROOT) -> int | None:
    """2 for the unified hierarchy, 1 when the v1 ``cpu`` controller is mounted, None otherwise."""
    if (root / "cgroup.controllers").is_file():
        return 2
    if (root / "cpu" / "cpu.cfs_quota_us").is_file():
        return 1
    return None


@dataclass
class CpuCgroup:
    """A child cgroup limiting its members to ``quota_us`` of CPU time per ``period_us``."""

    path: Path
    version: int
    quota_us: int
    period_us: int

    @property
    def cpus(self) -> float:
        return self.quota_us / self.period_us

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def set_cpus(self, cpus: float) -> None:
        """Change the quota of the live cgroup (a Pi throttling, a server given less of the machine)."""
        quota_us = max(1000, int(round(cpus * self.period_us)))
        if self.version == 1:
            _write(self.path / "cpu.cfs_quota_us", str(quota_us))
        else:
            _write(self.path / "cpu.max", f"{quota_us} {self.period_us}")
        self.quota_us = quota_us

    def join_preexec(self) -> Callable[[], None]:
        """A ``preexec_fn`` for ``subprocess.Popen``: the child moves itself in before exec."""
        procs = str(self.procs_file)

        def join() -> None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        return join

    def members(self) -> list[int]:
        try:
            return [int(line) for line in self.procs_file.read_text().split()]
        except OSError:
            return []

    def stats(self) -> dict[str, int]:
        """``cpu.stat`` counters (nr_periods, nr_throttled, throttled time ...) as integers."""
        try:
            text = (self.path / "cpu.stat").read_text()
        except OSError:
            return {}
        stats = {}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                stats[key] = int(value)
        return stats

    def describe(self) -> dict[str, Any]:
        files = (
            {"cpu.cfs_quota_us": self.quota_us, "cpu.cfs_period_us": self.period_us}
            if self.version == 1
            else {"cpu.max": f"{self.quota_us} {self.period_us}"}
        )
        return {
            "mechanism": f"cgroup v{self.version} CFS quota",
            "path": str(self.path),
            "files": files,
            "cpus": self.cpus,
            "quota_us": self.quota_us,
            "period_us": self.period_us,
        }

    def remove(self, timeout_s: float = 10.0) -> bool:
        """rmdir the cgroup once its members have exited; False if it could not be removed in time."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    return False
            time.sleep(0.05)  # the members are exiting; the kernel frees the cgroup when they are gone


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def create_cpu_cgroup(
    cpus: float, period_us: int = 10_000, *, root: Path = CGROUP_ROOT, name: str | None = None
) -> CpuCgroup:
    """Create a child cgroup capped at ``cpus`` CPUs (quota = cpus x period).

    Raises UsageError naming the reason (no controller, not permitted) and the fix (root, or --no-cpu-limit).
    """
    if not cpus > 0:
        raise UsageError(f"--device-cpus must be > 0, got {cpus}")
    if not 1000 <= period_us <= 1_000_000:
        raise UsageError(f"the CFS period must be between 1 ms and 1 s, got {period_us} us")
    quota_us = max(1000, int(round(cpus * period_us)))
    version = detect_cgroup_version(root)
    name = name or f"splitinf-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    hint = "run as root on a machine with the cgroup cpu controller, or pass --no-cpu-limit to run unlimited"
    if version is None:
        raise UsageError(f"no cgroup cpu controller under {root} (neither v1 cpu/ nor v2); {hint}")
    base = root / "cpu" if version == 1 else root
    path = base / name
    try:
        if version == 2:
            controllers = (root / "cgroup.subtree_control").read_text().split()
            if "cpu" not in controllers:
                _write(root / "cgroup.subtree_control", "+cpu")
        path.mkdir()
    except OSError as exc:
        raise UsageError(f"cannot create the cgroup {path}: {exc.strerror or exc}; {hint}") from exc
    group = CpuCgroup(path=path, version=version, quota_us=quota_us, period_us=period_us)
    try:
        if version == 1:
            _write(path / "cpu.cfs_period_us", str(period_us))
            _write(path / "cpu.cfs_quota_us", str(quota_us))
        else:
            _write(path / "cpu.max", f"{quota_us} {period_us}")
    except OSError as exc:
        group.remove(timeout_s=0)
        raise UsageError(f"cannot set the CPU quota in {path}: {exc.strerror or exc}; {hint}") from exc
    return group
