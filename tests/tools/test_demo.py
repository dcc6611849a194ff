"""``splitinf demo`` end to end: a real server, proxy and runtime, in a subprocess as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_splits_falls_back_when_severed_and_recovers(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    results = tmp_path / "demo.json"
    env = {**os.environ, "TMPDIR": str(scratch)}
    completed = subprocess.run(
        [sys.executable, "-m", "splitinf", "demo", "--phase-seconds", "3,4,14", "--json", str(results)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr
    healthy, severed, healed = json.loads(results.read_text())["phases"]

    # Healthy link: every answer is a split answer, as accurate as the main model.
    assert healthy["answers"].get("fallback", 0) == 0 and healthy["answers"]["split"] == healthy["requests"]
    assert healthy["accuracy"] >= 0.95
    # Severed: the fallback answers, nothing is lost, and no answer waits past the budget plus a margin.
    assert severed["answers"].get("fallback", 0) > 0.8 * severed["requests"]
    assert sum(severed["answers"].values()) == severed["requests"]
    assert severed["max_ms"] < 100 + 100, "an answer waited far past the 100 ms budget"
    assert any(change["to"] == "fallback" for change in severed["mode_changes"])
    # Healed: back in split mode before the phase ends.
    assert any(change["to"] == "split" for change in healed["mode_changes"])
    assert healed["mode_at_end"] == "split"
    assert healed["answers"].get("split", 0) > 0

    out = completed.stdout
    for phase in ("healthy", "severed", "healed"):
        assert phase in out
    assert "/metrics" in out
    # Everything it wrote was in its temporary directory, and that is gone.
    assert list(scratch.iterdir()) == []
    assert {p.name for p in tmp_path.iterdir()} == {"tmp", "demo.json"}


def test_demo_usage_errors_exit_2_without_traceback() -> None:
    for flags, named in ((["--phase-seconds", "1,2"], "three durations"), (["--rate", "0"], "--rate")):
        done = subprocess.run(
            [sys.executable, "-m", "splitinf", "demo", *flags], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, done.stderr
        assert named in done.stderr and "Traceback" not in done.stderr
