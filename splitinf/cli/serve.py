"""``splitinf serve``: serve a model repository of tails over the Open Inference Protocol (gRPC)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model repository (tails) over KServe V2 gRPC",
        description=(
            "Serve REPO/MODEL/VERSION/model.onnx over the Open Inference Protocol (KServe V2) on gRPC, "
            "with health checking, reflection and Prometheus metrics. Settings come from --config (TOML), "
            "then these flags. SIGTERM drains: health NOT_SERVING, new calls refused, calls in flight finish."
        ),
    )
    parser.add_argument("--repo", type=Path, help="model repository in Triton's layout")
    parser.add_argument("--config", type=Path, help="TOML config file (see cloud/server.toml)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1: loopback only)")
    parser.add_argument("--port", type=int, help="gRPC port (default 8001; 0 picks a free one)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (default 8002; -1 turns it off)")
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument("--tls-client-ca", type=Path, help="CA for client certificates: turns on mutual TLS")
    parser.add_argument("--token-file", type=Path, help="file holding the bearer token every call must carry")
    parser.add_argument("--max-batch", type=int, help="dynamic batching: max batch size (0 turns it off)")
    parser.add_argument("--batch-delay-ms", type=float, help="dynamic batching: max queue delay in ms")
    parser.add_argument("--max-inflight", type=int, help="requests admitted at once; more get RESOURCE_EXHAUSTED")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads per session (0: default)")
    parser.add_argument("--providers", help="comma-separated onnxruntime execution providers, in order of preference")
    parser.add_argument("--drain-grace", type=float, help="seconds calls in flight get to finish on SIGTERM")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from splitinf.cloud.app import create_server
    from splitinf.cloud.config import load_server_config

    config = load_server_config(
        args.config,
        repo=args.repo,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        cert=args.tls_cert,
        key=args.tls_key,
        client_ca=args.tls_client_ca,
        token_file=args.token_file,
        max_batch_size=args.max_batch,
        batch_delay_ms=args.batch_delay_ms,
        max_inflight=args.max_inflight,
        intra_op_threads=args.threads,
        providers=tuple(p.strip() for p in args.providers.split(",") if p.strip()) if args.providers else None,
        drain_grace_s=args.drain_grace,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server, port = create_server(config)
        models = ", ".join(sorted(server.dataplane.models))
        print(f"serving on {config.host}:{port} ({models})", flush=True)
        if server.metrics_port is not None:
            print(f"metrics on http://{config.host}:{server.metrics_port}/metrics", flush=True)
        stop.wait()
        server.begin_drain()
        print(f"draining (up to {config.drain_grace_s:g}s for calls in flight)", flush=True)
        finished = server.drain()
        print("stopped" if finished else "stopped with calls still in flight after the grace period", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
