"""The device deployment in edge/: the systemd unit (valid, hardened, running a command that parses) and
edge/README.md's commands, Python snippet and grpcurl requests against a real device endpoint."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
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


# ---- edge/README.md, as a Pi user runs it --------------------------------------------------------

EDGE_README = ROOT / "edge" / "README.md"


def readme_blocks(language: str) -> list[str]:
    text = EDGE_README.read_text()
    return [textwrap.dedent(block) for block in re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)]


def readme_splitinf_commands() -> list[list[str]]:
    lines = [line.strip() for block in readme_blocks("sh") for line in block.splitlines()]
    lines += [line.strip() for line in EDGE_README.read_text().splitlines() if line.startswith("    splitinf ")]
    commands = []
    for line in lines:
        words = shlex.split(line.split("  #")[0])
        if words and words[0].endswith("splitinf") and not words[0].startswith("/tmp"):
            commands.append(words[1:])
    return commands


def test_every_splitinf_command_in_the_edge_readme_parses() -> None:
    commands = readme_splitinf_commands()
    assert len(commands) >= 5
    parser = build_parser()
    for words in commands:
        args = parser.parse_args(words)
        assert args.command == "run", words


@pytest.fixture
def digits_endpoint(tmp_path: Path) -> Iterator[str]:
    """The shipped digits model, planned by hand (full offload), served by a tail server and a device endpoint,
    as the README's walkthrough leaves a Pi: the model named ``model`` on the endpoint."""
    import onnx

    from splitinf.cloud.app import create_server
    from splitinf.cloud.config import ServerConfig
    from splitinf.edge.config import DeviceConfig
    from splitinf.edge.endpoint import serve_endpoint
    from splitinf.edge.runtime import Runtime
    from splitinf.tools.models import DIGITS_INPUT, digits_fallback_path, digits_main_path
    from splitinf.tools.testing.plans import write_plan_dir

    main, small = onnx.load(digits_main_path()), onnx.load(digits_fallback_path())
    write_plan_dir(tmp_path / "plan", main, small, {DIGITS_INPUT: (0.0001, 0.0001)}, name="model")
    server, server_port = create_server(ServerConfig(repo=tmp_path / "plan" / "server", port=0, metrics_port=None))
    runtime = Runtime(tmp_path / "plan", DeviceConfig(server=f"127.0.0.1:{server_port}", budget_s=2.0))
    endpoint, port = serve_endpoint(runtime)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        endpoint.stop(grace=0)
        runtime.close()
        server.stop(grace=0)


def test_the_python_snippet_in_the_edge_readme_calls_the_endpoint(
    digits_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (snippet,) = readme_blocks("python")
    assert '"127.0.0.1:8001"' in snippet
    exec(compile(snippet.replace("127.0.0.1:8001", digits_endpoint), "edge/README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("split:image:fp32 ") and printed[0].endswith(" ms")
    assert "'logits': array(" in printed[1]


def test_the_grpcurl_requests_in_the_edge_readme_are_answered(digits_endpoint: str) -> None:
    """What grpcurl sends for the README's lines (its JSON body, through the same protobuf JSON mapping),
    and the reflection it relies on."""
    from google.protobuf import json_format
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from splitinf.protocol import grpc_service_pb2 as pb
    from splitinf.protocol import grpc_service_pb2_grpc as pb_grpc

    lines = [line.strip() for block in readme_blocks("sh") for line in block.splitlines() if "grpcurl" in line]
    zeros_line = next(line for block in readme_blocks("sh") for line in block.splitlines() if "ZEROS=" in line)
    zeros = subprocess.run(
        ["bash", "-c", zeros_line.strip() + ' && printf %s "$ZEROS"'], capture_output=True, text=True, check=True
    ).stdout
    infer_line = next(line for line in lines if line.endswith("inference.GRPCInferenceService/ModelInfer"))
    body = shlex.split(infer_line.replace('"$ZEROS"', zeros))[3]
    request = json_format.Parse(body, pb.ModelInferRequest())
    with grpc.insecure_channel(digits_endpoint) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        assert reply.parameters["splitinf_path"].string_param == "split:image:fp32"
        assert reply.outputs[0].name == "logits" and len(reply.raw_output_contents[0]) == 10 * 4
        assert any(line.endswith("grpc.health.v1.Health/Check") for line in lines)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        services = {s.name for answer in listing for s in answer.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
