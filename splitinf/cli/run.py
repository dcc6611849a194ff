"""``splitinf run --plan DIR --server HOST:PORT ...``: answer on the device, split or locally.

Three ways in, any together:

- ``INPUTS``: ``.npy`` files, directories of them, ``.npz`` files (arrays named by input name);
  a stacked array is one request per sample (see ``splitinf.edge.files``);
- ``--watch DIR``: keep answering files dropped into DIR; each answered file moves to
  ``DIR/done/`` (``--delete`` deletes it), one that cannot be answered to ``DIR/failed/``;
- ``--listen HOST:PORT``: serve the Open Inference Protocol (gRPC) for applications on the device,
  one model named after the plan's model (``--model-name``), until SIGTERM.

Answers go to ``--output DIR`` (one ``.npz`` per input file, every output by name) and to
stdout: one line per request with the path taken and the latency breakdown, or with ``--json``
one object per request holding the outputs (top-k classes with ``--labels FILE``). Mode changes
are logged to stderr as JSON lines (logger ``splitinf.edge.events``).

Exit status 1 when every answer came from the fallback because no tail server ever answered
(``--allow-offline`` makes that 0, for a service that must not restart over it).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="answer inputs on the device: split with the tail server, or fall back locally",
        description=(
            "Load a plan directory (heads, fallback, local model) and answer with the policy's choice "
            "(split at a cut with the tail server, or a model on the device): input files, a watched inbox, "
            "or applications calling the device's V2 endpoint (--listen)."
        ),
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help=".npy files, directories of them, or .npz files")
    parser.add_argument("--plan", required=True, metavar="DIR", help="plan directory written by `splitinf plan`")
    parser.add_argument("--server", metavar="HOST:PORT", help="the tail server (overrides the config's server)")
    parser.add_argument("--budget-ms", type=float, metavar="N", help="latency budget per request, in milliseconds")
    parser.add_argument("--config", metavar="device.toml", help="device config (see edge/device.toml)")
    parser.add_argument(
        "--tail-identity",
        choices=("metadata", "sha256"),
        help="how the device knows the server runs the plan's tails: metadata (any V2 server; the default) "
        "or sha256 (every answer must carry splitinf_model_sha256: splitinf serve only)",
    )
    parser.add_argument("--metrics-port", type=int, metavar="P", help="serve Prometheus metrics on this port")
    parser.add_argument("--stream", action="store_true", help="pipeline requests (head of i+1 overlaps i's network)")
    parser.add_argument("--output", metavar="DIR", help="write one .npz of outputs per input file into DIR")
    parser.add_argument("--json", action="store_true", help="print one JSON object per request, with its outputs")
    parser.add_argument("--labels", metavar="FILE", help="class names, one per line: --json prints the top-k classes")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classes shown with --labels (default 5)")
    parser.add_argument("--batch", type=int, default=1, metavar="N", help="samples per request (dynamic batch only)")
    parser.add_argument("--watch", metavar="DIR", help="keep answering .npy/.npz files dropped into DIR")
    parser.add_argument("--delete", action="store_true", help="with --watch: delete answered files (default: DIR/done)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="serve the V2 gRPC endpoint here (e.g. 127.0.0.1:8001)")
    parser.add_argument("--model-name", metavar="NAME", help="the endpoint's model name (default: the plan's model)")
    parser.add_argument(
        "--allow-offline", action="store_true", help="exit 0 even when no tail server ever answered (for a service)"
    )
    parser.add_argument("--watch-interval", type=float, default=0.5, metavar="S", help=argparse.SUPPRESS)
    parser.add_argument("--max-files", type=int, default=0, help=argparse.SUPPRESS)  # for tests of --watch
    parser.set_defaults(handler=run)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the one at set-up, so a
    runtime that outlives the command (tests, embedding) never writes to a closed stream."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _configure_event_log() -> None:
    """Mode changes and fallbacks as bare JSON lines on stderr, whatever -v says about the rest."""
    from splitinf.edge.runtime import EVENTS_LOGGER

    events = logging.getLogger(EVENTS_LOGGER)
    if not any(isinstance(h, _StderrHandler) for h in events.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        events.addHandler(handler)
    events.setLevel(logging.INFO)
    events.propagate = False


def _open_runtime(plan_dir: str, config: Any) -> Any:
    """The runtime, or a UsageError naming the file the service's user cannot read and the fix."""
    import os

    from splitinf.edge.runtime import Runtime
    from splitinf.errors import UsageError

    root = Path(plan_dir)
    try:
        if root.is_dir():
            os.listdir(root)
            if (root / "plan.json").exists():
                (root / "plan.json").open("rb").close()
        return Runtime(root, config)
    except PermissionError as exc:
        raise UsageError(
            f"cannot read {exc.filename or root}: permission denied for this user. Make the plan readable: "
            f"`sudo chmod -R a+rX {root}` (or `sudo chown -R USER {root}`); "
            "plans written by `splitinf plan` are 0644/0755 unless written under umask 077"
        ) from exc


def run(args: argparse.Namespace) -> int:
    from splitinf.edge.config import DeviceConfig, load_device_config
    from splitinf.errors import ConfigError, UsageError

    config = load_device_config(args.config) if args.config else DeviceConfig()
    if args.budget_ms is not None and args.budget_ms <= 0:
        raise ConfigError(f"--budget-ms must be > 0, got {args.budget_ms:g}")
    config = config.with_overrides(
        server=args.server,
        budget_s=None if args.budget_ms is None else args.budget_ms / 1000,
        tail_identity=args.tail_identity,
    )
    if config.server is None:
        raise UsageError("no tail server: give --server HOST:PORT or `server` in the --config file")
    if not args.inputs and not args.watch and not args.listen:
        raise UsageError("give INPUT files or directories, --watch DIR, or --listen HOST:PORT")
    if args.batch < 1 or args.top_k < 1:
        raise UsageError("--batch and --top-k must be at least 1")
    watch_dir = Path(args.watch) if args.watch else None
    if watch_dir is not None and not watch_dir.is_dir():
        raise UsageError(f"--watch {watch_dir} is not a directory; create it (the systemd unit's StateDirectory does)")
    listen = _listen_address(args.listen) if args.listen else None
    _configure_event_log()
    runtime = _open_runtime(args.plan, config)
    stop = threading.Event()
    restore = _stop_on_signals(stop)
    endpoint = None
    try:
        answers = Answers(runtime, args)
        if args.metrics_port is not None or config.metrics_port is not None:
            port = runtime.start_metrics_server(args.metrics_port)
            print(f"metrics: http://{config.metrics_host}:{port}/metrics", file=sys.stderr, flush=True)
        if listen is not None:
            endpoint = _serve(runtime, listen, args.model_name)
        if args.inputs:
            answers.files(_input_files(args.inputs))
        if watch_dir is not None:
            answers.inbox(watch_dir, stop)
        elif endpoint is not None:
            while not stop.wait(1.0):
                pass
        return answers.finish()
    finally:
        if endpoint is not None:
            endpoint.stop(grace=2.0)
        restore()
        runtime.close()


def _listen_address(text: str) -> tuple[str, int]:
    from splitinf.tools.faults.proxy import parse_host_port

    return parse_host_port(text, what="--listen")


def _serve(runtime: Any, listen: tuple[str, int], model_name: str | None) -> Any:
    from splitinf.edge.endpoint import serve_endpoint

    host, port = listen
    endpoint, bound = serve_endpoint(runtime, host, port, model_name=model_name)
    print(f"endpoint: model {endpoint.servicer.model_name!r} on {host}:{bound} (V2 gRPC)", flush=True)
    return endpoint


def _stop_on_signals(stop: threading.Event) -> Any:
    """SIGTERM (systemd's stop) ends the watch loop and the endpoint cleanly; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    return lambda: signal.signal(signal.SIGTERM, previous)


def _input_files(paths: Iterable[str]) -> Iterator[Path]:
    from splitinf.edge.files import SUFFIXES
    from splitinf.errors import InputError

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES)
            if not files:
                raise InputError(f"{path} holds no .npy or .npz files")
            yield from files
        elif path.exists():
            yield path
        else:
            raise InputError(f"{path} does not exist")


@dataclass
class _Tally:
    paths: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    fallbacks: int = 0
    started: float = field(default_factory=time.perf_counter)


class Answers:
    """Answers files one at a time: requests -> runtime -> lines, ``--output`` files, inbox moves."""

    def __init__(self, runtime: Any, args: argparse.Namespace):
        from splitinf.edge.files import check_labels, load_labels

        self.runtime = runtime
        self.args = args
        self.output = Path(args.output) if args.output else None
        self.labels = load_labels(Path(args.labels)) if args.labels else None
        if self.labels is not None:
            check_labels(self.labels, runtime.plan.outputs)
        self.tally = _Tally()

    def files(self, paths: Iterable[Path]) -> None:
        from splitinf.edge.files import read_input_file

        for path in paths:
            self._answer(read_input_file(path, self.runtime.plan.inputs, self.args.batch))

    def inbox(self, directory: Path, stop: threading.Event) -> None:
        """Answer files as they arrive; a file that cannot be answered moves to failed/ and is logged."""
        from splitinf.edge.files import inbox_files, read_input_file, retire
        from splitinf.errors import InputError

        args = self.args
        for path in inbox_files(directory, stop, args.watch_interval, args.max_files):
            try:
                request = read_input_file(path, self.runtime.plan.inputs, args.batch)
                self._answer(request)
            except InputError as exc:
                print(f"splitinf run: refused {path}: {exc}", file=sys.stderr, flush=True)
                retire(path, delete=False, subdirectory="failed")
                continue
            retire(path, delete=args.delete)

    def _answer(self, request: Any) -> None:
        from splitinf.edge.files import write_answer

        runtime = self.runtime
        if self.args.stream:
            results = list(runtime.infer_stream(request.requests))
        else:
            results = [runtime.infer(inputs) for inputs in request.requests]
        for label, result in zip(request.labels, results, strict=True):
            self._report(label, result)
        if self.output is not None:
            write_answer(self.output, request.path, request.answers([r.outputs for r in results]))

    def _report(self, label: str, result: Any) -> None:
        from splitinf.edge.files import output_fields

        tally = self.tally
        tally.paths[result.option_id] += 1
        tally.latencies.append(result.latency.total_s)
        tally.fallbacks += result.kind == "fallback"
        if result.fallback_reason:
            tally.reasons[result.fallback_reason] += 1
        lat = result.latency
        if self.args.json:
            record = {
                "input": label,
                "path": result.option_id,
                "kind": result.kind,
                "mode": result.mode,
                "fallback_reason": result.fallback_reason,
                "latency_ms": {k.removesuffix("_s"): round(v * 1000, 3) for k, v in lat.__dict__.items()},
                "outputs": output_fields(result.outputs, self.labels, self.args.top_k),
            }
            print(json.dumps(record), flush=True)
            return
        stages = (
            ("head", lat.head_s),
            ("net", lat.network_s),
            ("server", lat.server_s),
            ("on-device", lat.on_device_s),
            ("wait", lat.wait_s),
        )
        detail = " ".join(f"{name} {_ms(seconds)}" for name, seconds in stages if seconds)
        why = f"  [fell back: {result.fallback_reason}]" if result.fallback_reason else ""
        top = f"  {self._top1(result.outputs)}" if self.labels is not None else ""
        print(f"{label}  {result.option_id}  {_ms(lat.total_s)}  ({detail}){why}{top}", flush=True)

    def _top1(self, outputs: Any) -> str:
        from splitinf.edge.files import output_fields

        for field_ in output_fields(outputs, self.labels, 1).values():
            top = field_.get("top")
            if top:
                first = top[0] if isinstance(top[0], dict) else top[0][0]
                return str(first["label"])
        return ""

    def finish(self) -> int:
        """Print the summary; the exit status (1: every answer from the fallback, no server ever answered)."""
        from splitinf.contract.stats import quantile

        tally, runtime = self.tally, self.runtime
        latencies = tally.latencies
        wall = time.perf_counter() - tally.started
        if not latencies and not self.args.inputs:
            return 0  # a service stopped before any file came
        summary = {
            "requests": len(latencies),
            "paths": dict(tally.paths),
            "fallbacks": dict(tally.reasons),
            "mode": runtime.mode.value,
            "mode_changes": sum(1 for e in runtime.events if e.kind == "mode"),
            "p50_ms": round(statistics.median(latencies) * 1000, 3) if latencies else None,
            "p95_ms": round(quantile(latencies, 0.95) * 1000, 3) if latencies else None,
            "wall_s": round(wall, 3),
        }
        if self.args.json:
            print(json.dumps({"summary": summary}), flush=True)
        else:
            print(
                f"summary: {summary['requests']} requests in {wall:.2f} s; paths {dict(tally.paths)}; "
                f"fallbacks {dict(tally.reasons) or 'none'}; p50 {summary['p50_ms']} ms, p95 {summary['p95_ms']} ms; "
                f"mode now {summary['mode']} after {summary['mode_changes']} change(s)",
                flush=True,
            )
        offline = latencies and tally.fallbacks == len(latencies) and not runtime.server_reached
        if offline and not self.args.allow_offline:
            print(
                f"splitinf run: failed: the tail server at {runtime.config.server} never answered; every answer "
                "came from the fallback model. Check the address and the network, or pass --allow-offline",
                file=sys.stderr,
            )
            return 1
        return 0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"
