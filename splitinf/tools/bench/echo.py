"""A bare gRPC echo: the yardstick for splitinf's framework overhead.

One unary method, ``/splitinf.tools.bench.Echo/Echo``, registered with a generic handler and no
(de)serialisers, so the bytes go through gRPC untouched. The request is an 8-byte
little-endian response length followed by the payload; the answer is the payload repeated
or cut to that length. So a V2 call of R request bytes and S response bytes is compared
with an echo of the same R and S bytes.

    python -m splitinf.tools.bench.echo [--port 0]     prints "echo on HOST:PORT", runs until SIGTERM
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from concurrent import futures
from typing import Any

import grpc

__all__ = ["ECHO_METHOD", "EchoClient", "echo_payload", "start_echo_server"]

ECHO_SERVICE = "splitinf.tools.bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"
_MAX_MESSAGE = 64 * 1024 * 1024
_OPTIONS = [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)]


def echo_payload(request: bytes) -> bytes:
    """The echo's answer: the payload after the 8-byte length, repeated or cut to that length."""
    length = int.from_bytes(request[:8], "little")
    payload = request[8:] or b"\0"
    repeats = -(-length // len(payload))
    return (payload * repeats)[:length]


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return echo_payload(request)


def start_echo_server(host: str = "127.0.0.1", port: int = 0, workers: int = 4) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=_OPTIONS)
    handler = grpc.method_handlers_generic_handler(ECHO_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)})
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound


class EchoClient:
    def __init__(self, target: str) -> None:
        self._channel = grpc.insecure_channel(target, _OPTIONS)
        self._call = self._channel.unary_unary(ECHO_METHOD)

    def round_trip(self, request_bytes: int, response_bytes: int, timeout_s: float = 30.0) -> float:
        """Seconds for one echo of ``request_bytes`` up and ``response_bytes`` back."""
        request = response_bytes.to_bytes(8, "little") + b"\x5a" * max(request_bytes - 8, 0)
        start = time.perf_counter()
        answer: Any = self._call(request, timeout=timeout_s)
        elapsed = time.perf_counter() - start
        if len(answer) != response_bytes:
            raise RuntimeError(f"echo answered {len(answer)} bytes, expected {response_bytes}")
        return elapsed

    def close(self) -> None:
        self._channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m splitinf.tools.bench.echo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server, port = start_echo_server(args.host, args.port)
    print(f"echo on {args.host}:{port}", flush=True)
    stop.wait()
    server.stop(grace=1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
