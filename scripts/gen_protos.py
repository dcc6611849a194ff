"""Generate splitinf's protocol Python code from protos/*.proto.

Usage::

    python -m venv /tmp/protoc && /tmp/protoc/bin/pip install grpcio-tools==1.64.3
    /tmp/protoc/bin/python scripts/gen_protos.py [OUTDIR]        (default splitinf/protocol)

The committed code is made with grpcio-tools 1.64.3, whose protoc writes protobuf 5.26.1
gencode: the oldest that grpcio-health-checking/-reflection accept (they need
protobuf>=5.26.1), so the same modules load on every protobuf runtime from 5.26.1 to 7.x
and splitinf installs beside libraries pinned to any of them (tritonclient 2.73 needs
protobuf<7). Its gRPC plugin requires grpcio>=1.64.3, the first grpcio whose server has
add_registered_method_handlers (cloud/ uses it). pyproject.toml's lower bounds on protobuf
and grpcio are these versions; tests/protocol/test_generated_code.py fails when they
disagree. Another grpcio-tools is refused unless ``--any-version`` (the drift test uses it
and compares the descriptors, which do not depend on the tool's version).
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
# Dependencies first: grpc_service.proto imports model_config.proto.
PROTO_FILES = ("model_config.proto", "grpc_service.proto")
DEFAULT_OUT = ROOT / "splitinf" / "protocol"
GENERATED = (
    "model_config_pb2.py",
    "model_config_pb2.pyi",
    "grpc_service_pb2.py",
    "grpc_service_pb2.pyi",
    "grpc_service_pb2_grpc.py",
)
GRPCIO_TOOLS_VERSION = "1.64.3"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools); make imports package-relative and descriptors private."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    for proto in PROTO_FILES:
        args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={out_dir}", f"--pyi_out={out_dir}"]
        if proto == "grpc_service.proto":
            args.append(f"--grpc_python_out={out_dir}")
        status = protoc.main([*args, proto])
        if status != 0:
            raise SystemExit(f"protoc failed on {proto} with status {status}")
    # protoc writes top-level imports that only work with OUTDIR on sys.path.
    _make_relative(out_dir / "grpc_service_pb2_grpc.py", "grpc_service_pb2")
    _make_relative(out_dir / "grpc_service_pb2.py", "model_config_pb2")
    _make_relative(out_dir / "grpc_service_pb2.pyi", "model_config_pb2")
    _use_private_pool(out_dir / "model_config_pb2.py", "_descriptor_pool.DescriptorPool()")
    _use_private_pool(out_dir / "grpc_service_pb2.py", "model__config__pb2.POOL")
    return [out_dir / name for name in GENERATED]


def _make_relative(module: Path, imported: str) -> None:
    text = module.read_text()
    fixed, count = re.subn(rf"^import {imported} as ", f"from . import {imported} as ", text, flags=re.M)
    if count != 1:
        raise SystemExit(f"expected one 'import {imported}' line in {module}, found {count}")
    module.write_text(fixed)


def _use_private_pool(pb2_module: Path, pool: str) -> None:
    """Register our descriptors in a pool of their own, not protobuf's process-wide default.

    Every V2 client library (tritonclient, KServe, MLServer) registers the same
    ``inference.*`` names in the default pool; two definitions of one name there make
    the second import fail ("duplicate file name grpc_service.proto"). A private pool
    (one for both files, since grpc_service.proto imports model_config.proto) lets
    splitinf and those libraries live in one process; the wire format is unchanged.
    """
    text = pb2_module.read_text()
    default_pool = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
    if text.count(default_pool) != 1:
        raise SystemExit(f"expected one '{default_pool}' line in {pb2_module}")
    text = text.replace(
        default_pool,
        "# splitinf: a private pool, so other V2 stubs (tritonclient ...) can be imported too.\n"
        f"POOL = {pool}\n"
        "DESCRIPTOR = POOL.AddSerializedFile(",
    )
    pb2_module.write_text(text)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Generate splitinf's protocol code from protos/*.proto.")
    parser.add_argument(
        "out_dir", nargs="?", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--any-version",
        action="store_true",
        help=f"run with the installed grpcio-tools even if it is not {GRPCIO_TOOLS_VERSION}",
    )
    args = parser.parse_args(argv)
    installed = metadata.version("grpcio-tools")
    if installed != GRPCIO_TOOLS_VERSION and not args.any_version:
        print(
            f"gen_protos: grpcio-tools {installed} is installed; the committed code is made with "
            f"{GRPCIO_TOOLS_VERSION} (protobuf 5.26.1 gencode, see this script's docstring). Run it from a "
            f"throwaway venv: python -m venv /tmp/protoc && /tmp/protoc/bin/pip install "
            f"grpcio-tools=={GRPCIO_TOOLS_VERSION} && /tmp/protoc/bin/python scripts/gen_protos.py",
            file=sys.stderr,
        )
        return 2
    for path in generate(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
