"""The README's commands are the ones CI runs."""

from __future__ import annotations

import re
import stat
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = readme_commands()[1]
    assert "pytest" in test_command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def walkthrough_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- walkthrough.*?-->\n```sh\n(.*?)```", text, flags=re.S)
    assert block, "README.md lost its walkthrough block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """Each walkthrough line runs as written on the digits models; only the server's address is local."""
    import shutil
    import subprocess
    import sys

    import numpy as np

    from splitinf.tools.models import DIGITS_INPUT, digits_fallback_path, digits_main_path, load_digits_test

    shutil.copy(digits_main_path(), tmp_path / "model.onnx")
    shutil.copy(digits_fallback_path(), tmp_path / "small.onnx")
    images, labels = load_digits_test()
    # 300 samples: the plan measures accuracy on the last quarter, enough to tell the fallback from the main model.
    np.savez(tmp_path / "samples.npz", **{DIGITS_INPUT: images[:300], "labels": labels[:300]})
    (tmp_path / "inputs").mkdir()
    for i in range(5):
        np.save(tmp_path / "inputs" / f"digit{i}.npy", images[300 + i : 301 + i])
    splitinf = str(Path(sys.executable).parent / "splitinf")

    def argv(line: str) -> list[str]:
        words = line.split()
        if words[0] == "python":  # an application: a script of this checkout
            return [sys.executable, str(ROOT / words[1]), *words[2:]]
        assert words[0] == "splitinf"
        return [splitinf, *words[1:]]

    def start(line: str, announcement: str) -> tuple[subprocess.Popen[str], str]:
        """A long-running command, and the HOST:PORT it says it listens on."""
        process = subprocess.Popen(argv(line), cwd=tmp_path, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        for out in process.stdout:
            found = re.search(announcement + r".*? on (\S+:\d+)", out)
            if found:
                return process, found.group(1)
        raise AssertionError(f"{line} never said where it listens")

    services: list[subprocess.Popen[str]] = []
    address = endpoint = None
    try:
        for line in walkthrough_commands():
            if line.startswith("splitinf serve"):
                local = line.replace("--host 0.0.0.0", "--host 127.0.0.1").replace("--port 8001", "--port 0")
                server, address = start(f"{local} --metrics-port 0", "serving")
                services.append(server)
                continue
            if address is not None:
                line = line.replace("workstation.local:8001", address)
            if " --listen " in line:  # the device endpoint: serves until stopped
                device, endpoint = start(line.replace("--listen 127.0.0.1:8001", "--listen 127.0.0.1:0"), "endpoint")
                services.append(device)
                continue
            if endpoint is not None:
                line = line.replace("127.0.0.1:8001", endpoint)
            done = subprocess.run(argv(line), cwd=tmp_path, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            assert "Traceback" not in done.stderr
            if line.startswith("splitinf run"):
                answered = [row for row in done.stdout.splitlines() if "digit" in row]
                assert len(answered) == 5
                # A healthy link and a main model that fits here: split or local, never the less accurate fallback.
                assert all(row.split()[1].startswith(("split:", "local")) for row in answered), done.stdout
            if line.startswith("python"):  # the application got the full model's answer through the endpoint
                assert re.search(r"digit0\.npy: class \d+ \(answered by (split:|local)", done.stdout), done.stdout
    finally:
        for service in services:
            service.terminate()
            assert service.wait(timeout=30) == 0
    plan = tmp_path / "plan"
    assert (plan / "plan.json").is_file() and (plan / "report.md").is_file() and (plan / "latency.svg").is_file()
    assert endpoint is not None, "the walkthrough no longer ends with an application calling the device endpoint"
    assert sorted(p.name for p in (tmp_path / "answers").iterdir()) == [f"digit{i}.npz" for i in range(5)]
    # readable by the device service's user (other users), not tempfile's 0700/0600
    assert stat.S_IMODE((plan / "device").stat().st_mode) & 0o005 == 0o005
    assert stat.S_IMODE((plan / "plan.json").stat().st_mode) & 0o004 == 0o004


def quoted_commands() -> list[str]:
    """Every command the README shows: code blocks and inline code starting with splitinf or python."""
    text = (ROOT / "README.md").read_text()
    inline = re.findall(r"`((?:splitinf|python) [^`]+)`", text)
    return [c for c in [*readme_commands(), *inline] if c.startswith(("splitinf ", "python "))]


def test_every_splitinf_command_in_the_readme_parses_against_the_real_cli() -> None:
    import shlex

    from splitinf.cli import SUBCOMMAND_MODULES, build_parser

    parser = build_parser()
    commands = [c for c in quoted_commands() if c.startswith("splitinf ")]
    assert len(commands) >= 10
    for command in commands:
        words = shlex.split(command)[1:]
        if len(words) == 1:  # prose naming a subcommand, e.g. `splitinf proxy`
            assert words[0] in SUBCOMMAND_MODULES, command
            continue
        try:
            args = parser.parse_args(words)
        except SystemExit as exc:
            raise AssertionError(f"README command does not parse: {command}") from exc
        assert callable(args.handler), command


def test_every_script_the_readme_names_exists_and_answers_help() -> None:
    import shlex
    import subprocess
    import sys

    commands = [shlex.split(c) for c in quoted_commands() if c.startswith("python ")]
    for words in commands:
        if words[1:3] == ["-m", "pytest"]:  # it must select tests that exist
            collect = [
                sys.executable,
                "-m",
                "pytest",
                "--collect-only",
                "-q",
                *[w for w in words[3:] if w not in ("-s", "-q")],
            ]
            done = subprocess.run(collect, cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0 and "::" in done.stdout, f"{' '.join(words)} selects no test"
    scripts = {words[1] for words in commands if words[1] != "-m"}
    assert scripts
    for script in sorted(scripts):
        assert (ROOT / script).is_file(), f"README names {script}, which does not exist"
        done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "usage" in done.stdout.lower(), f"{script} --help: {done.stderr}"
