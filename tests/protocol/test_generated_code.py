"""The generated protocol code: matches protos/, and agrees with pyproject.toml's dependency bounds."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from splitinf.protocol import grpc_service_pb2 as pb
from splitinf.protocol import model_config_pb2 as mc

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "splitinf" / "protocol"
sys.path.insert(0, str(ROOT / "scripts"))
import gen_protos  # noqa: E402


def _serialized_descriptor(module: Path) -> bytes:
    match = re.search(r"AddSerializedFile\((b'.*?')\)\n", module.read_text())
    assert match, f"{module}: no AddSerializedFile(...) line"
    return bytes(ast.literal_eval(match.group(1)))


def _gencode_version(module: Path) -> Version:
    """The protobuf version of protoc that wrote ``module`` (its header, and its runtime check if any)."""
    text = module.read_text()
    header = re.search(r"^# Protobuf Python Version: (\S+)$", text, flags=re.M)
    assert header, f"{module}: no '# Protobuf Python Version' header"
    check = re.search(r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),", text)
    if check:  # gencode from protobuf 5.27 on also checks the runtime when imported
        assert ".".join(check.groups()) == header.group(1), module
    return Version(header.group(1))


def _dependencies() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {req.name: req for req in map(Requirement, project["dependencies"])}


def _lower_bound(requirement: Requirement) -> Version:
    bounds = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    assert len(bounds) == 1, f"{requirement}: expected one '>=' bound"
    return bounds[0]


def test_committed_generated_code_matches_the_protos(tmp_path: Path) -> None:
    """Regenerated with whatever grpcio-tools is installed, the descriptors and methods are the committed ones."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--any-version", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in ("model_config_pb2.py", "grpc_service_pb2.py"):
        assert _serialized_descriptor(tmp_path / name) == _serialized_descriptor(PROTOCOL / name), (
            f"splitinf/protocol/{name} is stale: run scripts/gen_protos.py (its docstring says how)"
        )
    method = re.compile(r"'/inference\.GRPCInferenceService/(\w+)'")
    fresh = set(method.findall((tmp_path / "grpc_service_pb2_grpc.py").read_text()))
    assert fresh == set(method.findall((PROTOCOL / "grpc_service_pb2_grpc.py").read_text()))
    stub_classes = re.compile(r"^class (\w+)", flags=re.M)
    for name in ("model_config_pb2.pyi", "grpc_service_pb2.pyi"):
        fresh_classes = set(stub_classes.findall((tmp_path / name).read_text()))
        assert fresh_classes == set(stub_classes.findall((PROTOCOL / name).read_text())), name
    if metadata.version("grpcio-tools") == gen_protos.GRPCIO_TOOLS_VERSION:  # the pinned tool: byte for byte
        for name in gen_protos.GENERATED:
            assert (tmp_path / name).read_text() == (PROTOCOL / name).read_text(), name


def test_declared_protobuf_bound_is_the_gencode_version() -> None:
    """pyproject's protobuf floor is the version that wrote the code: lower fails at import, higher excludes users."""
    gencode = {_gencode_version(PROTOCOL / name) for name in ("grpc_service_pb2.py", "model_config_pb2.py")}
    assert len(gencode) == 1, gencode
    (version,) = gencode
    protobuf = _dependencies()["protobuf"]
    assert _lower_bound(protobuf) == version, f"pyproject says {protobuf}, the generated code is protobuf {version}"
    # Protobuf promises a runtime loads gencode of its major and the one before; 7.x also loads 5.x (the main
    # CI venv runs 7.x, the tritonclient venv 6.x). A future major may not: it is opted into after testing.
    assert any(spec.operator == "<" for spec in protobuf.specifier), f"{protobuf}: no upper bound"
    assert metadata.version("protobuf") in protobuf.specifier, "the installed protobuf is outside the declared range"


def test_declared_grpcio_bounds_are_the_generated_code_version() -> None:
    text = (PROTOCOL / "grpc_service_pb2_grpc.py").read_text()
    match = re.search(r"^GRPC_GENERATED_VERSION = '([\d.]+)'$", text, flags=re.M)
    assert match, "grpc_service_pb2_grpc.py: no GRPC_GENERATED_VERSION"
    generated = Version(match.group(1))
    assert str(generated) == gen_protos.GRPCIO_TOOLS_VERSION, "the committed code was not made with the pinned tool"
    dependencies = _dependencies()
    for name in ("grpcio", "grpcio-health-checking", "grpcio-reflection"):
        assert _lower_bound(dependencies[name]) == generated, f"{dependencies[name]}: the generated code is {generated}"


def test_generator_refuses_another_grpcio_tools_without_the_flag(tmp_path: Path) -> None:
    if metadata.version("grpcio-tools") == gen_protos.GRPCIO_TOOLS_VERSION:
        pytest.skip("the pinned grpcio-tools is installed: nothing to refuse")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert f"grpcio-tools=={gen_protos.GRPCIO_TOOLS_VERSION}" in result.stderr
    assert not list(tmp_path.iterdir())


def _fields(descriptor: Any) -> dict[str, tuple[int, int, bool, str]]:
    found = {}
    for field in descriptor.fields:
        sub = (field.message_type or field.enum_type).full_name if (field.message_type or field.enum_type) else ""
        found[f"{descriptor.full_name}.{field.name}"] = (field.number, field.type, field.is_repeated, sub)
    for nested in descriptor.nested_types:
        found.update(_fields(nested))
    return found


def test_model_config_subset_has_tritons_names_and_numbers() -> None:
    """Every field we declare is Triton's (same number and type), so tritonclient decodes our ModelConfig."""
    from tritonclient.grpc import model_config_pb2 as triton

    for name, message in mc.DESCRIPTOR.message_types_by_name.items():
        ours = _fields(message)
        theirs = _fields(triton.DESCRIPTOR.message_types_by_name[name])
        assert ours.items() <= theirs.items(), name
    for name, enum in mc.DESCRIPTOR.enum_types_by_name.items():
        theirs_enum = triton.DESCRIPTOR.enum_types_by_name[name]
        assert {v.name: v.number for v in enum.values}.items() <= {
            v.name: v.number for v in theirs_enum.values
        }.items(), name


def test_model_config_response_decodes_in_tritonclient() -> None:
    from tritonclient.grpc import service_pb2 as triton

    config = mc.ModelConfig(name="tail", platform="onnxruntime_onnx", max_batch_size=8)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[-1, 16])
    config.dynamic_batching.max_queue_delay_microseconds = 500
    theirs = triton.ModelConfigResponse.FromString(pb.ModelConfigResponse(config=config).SerializeToString())
    assert theirs.config.max_batch_size == 8 and theirs.config.input[0].dims == [-1, 16]
    assert theirs.config.input[0].data_type == triton.model__config__pb2.TYPE_FP32
    assert theirs.config.dynamic_batching.max_queue_delay_microseconds == 500
