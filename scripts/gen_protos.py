"""Generate splitinf's V2 protocol Python code from protos/grpc_service.proto.

Usage: ``python scripts/gen_protos.py [OUTDIR]`` (default ``splitinf/protocol``).
tests/protocol/test_protocol.py runs this into a temporary directory and fails when the
committed modules differ, so the .proto and the generated code cannot drift apart.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
PROTO_FILE = "grpc_service.proto"
DEFAULT_OUT = ROOT / "splitinf" / "protocol"
GENERATED = ("grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) and make the grpc module's import package-relative."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        PROTO_FILE,
    ]
    status = protoc.main(args)
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    grpc_module = out_dir / "grpc_service_pb2_grpc.py"
    text = grpc_module.read_text()
    # protoc writes a top-level import that only works with OUTDIR on sys.path.
    fixed, count = re.subn(r"^import grpc_service_pb2 as ", "from . import grpc_service_pb2 as ", text, flags=re.M)
    if count != 1:
        raise SystemExit(f"expected one 'import grpc_service_pb2' line in {grpc_module}, found {count}")
    grpc_module.write_text(fixed)
    _use_private_pool(out_dir / "grpc_service_pb2.py")
    return [out_dir / name for name in GENERATED]


def _use_private_pool(pb2_module: Path) -> None:
    """Register our descriptors in a pool of their own, not protobuf's process-wide default.

    Every V2 client library (tritonclient, KServe, MLServer) registers the same
    ``inference.*`` names in the default pool; two definitions of one name there make
    the second import fail ("duplicate file name grpc_service.proto"). A private pool
    lets splitinf and those libraries live in one process; the wire format is unchanged.
    """
    text = pb2_module.read_text()
    default_pool = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
    if text.count(default_pool) != 1:
        raise SystemExit(f"expected one '{default_pool}' line in {pb2_module}")
    text = text.replace(
        default_pool,
        "# splitinf: a private pool, so other V2 stubs (tritonclient ...) can be imported too.\n"
        "POOL = _descriptor_pool.DescriptorPool()\n"
        "DESCRIPTOR = POOL.AddSerializedFile(",
    )
    pb2_module.write_text(text)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Generate splitinf's V2 protocol code from protos/grpc_service.proto.")
    parser.add_argument(
        "out_dir", nargs="?", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})"
    )
    out_dir = parser.parse_args(argv).out_dir
    for path in generate(out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
