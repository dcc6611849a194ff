"""The device's systemd unit (edge/splitinf-device.service): valid, hardened, and running a command that parses."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from splitinf.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "edge" / "splitinf-device.service"
INSTALLED_BINARY = "/opt/splitinf/venv/bin/splitinf"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here (no systemd)"
)


def exec_start() -> list[str]:
    text = UNIT.read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def unit_here(tmp_path: Path) -> Path:
    """The unit with its ExecStart pointing at this venv's splitinf (verify checks that the binary exists)."""
    binary = Path(sys.executable).parent / "splitinf"
    if not binary.exists():
        pytest.skip(f"{binary} is not installed (pip install -e .)")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(binary)))
    return copy


def test_the_unit_runs_the_endpoint_and_the_inbox_with_a_command_that_parses() -> None:
    words = exec_start()
    assert words[0] == INSTALLED_BINARY
    args = build_parser().parse_args(words[1:])
    assert args.command == "run" and args.listen.startswith("127.0.0.1:")  # loopback only
    assert args.watch == "/var/lib/splitinf/inbox" and args.output == "/var/lib/splitinf/answers"
    assert args.allow_offline  # the tail server down must not make the service restart in a loop
    text = UNIT.read_text()
    state = re.search(r"^StateDirectory=(.*)$", text, flags=re.M)
    assert state is not None
    assert {"splitinf/inbox", "splitinf/answers"} <= set(state.group(1).split())  # created at start
    assert re.search(r"^User=splitinf$", text, flags=re.M)
    sysusers = (ROOT / "edge" / "splitinf.sysusers").read_text()
    assert re.search(r"^u splitinf ", sysusers, flags=re.M)


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit_here(tmp_path))], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@needs_systemd_analyze
def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit_here(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0 and "offline" in done.stderr:
        pytest.skip(f"this systemd-analyze has no offline security mode: {done.stderr.strip()}")
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", done.stdout)
    assert found, done.stdout + done.stderr
    score, verdict = float(found.group(1)), found.group(2)
    assert score <= 4.0 and verdict == "OK", done.stdout
