"""``splitinf run --plan DIR --server HOST:PORT [--budget-ms N] INPUTS...``: answer inputs on the device.

Each input is a ``.npy`` file, a directory of them, or a ``.npz``:

- a ``.npy`` holds the plan's single input; an array with one more leading axis than the
  input (or N rows where the input's first dimension is 1) is N requests;
- a ``.npz`` whose keys are the plan's input names (multi-input plans) is one request; for a
  single-input plan every array in it is treated like a ``.npy``.

Prints one line per request (path taken, latency, fallback reason) and a summary. With
``--watch DIR`` it keeps answering new files appearing in DIR (the systemd service in edge/).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="answer inputs on the device: split with the tail server, or fall back locally",
        description=(
            "Load a plan directory (heads, fallback, local model), answer each input with the policy's choice "
            "(split at a cut with the tail server, or a model on the device), and print the path and latency."
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
    parser.add_argument("--json", action="store_true", help="print one JSON object per request and for the summary")
    parser.add_argument("--watch", metavar="DIR", help="keep answering new .npy/.npz files appearing in DIR")
    parser.add_argument("--watch-interval", type=float, default=0.5, metavar="S", help=argparse.SUPPRESS)
    parser.add_argument("--max-files", type=int, default=0, help=argparse.SUPPRESS)  # for tests of --watch
    parser.set_defaults(handler=run)


def _load_file(path: Path) -> list[tuple[str, Any]]:
    """(label, array or {name: array}) pairs from one file."""
    import numpy as np

    from splitinf.errors import InputError

    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return [("npz", {key: archive[key] for key in archive.files})]
        if path.suffix == ".npy":
            return [("npy", np.load(path, allow_pickle=False))]
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable numpy file ({exc}); save arrays with numpy.save") from exc
    raise InputError(f"{path}: expected a .npy or .npz file")


def _requests_from_array(
    label: str, array: Any, name: str, shape: Sequence[int | str | None]
) -> Iterator[tuple[str, dict[str, Any]]]:
    if array.ndim == len(shape) + 1:
        for i in range(array.shape[0]):
            yield f"{label}[{i}]", {name: array[i]}
    elif array.ndim == len(shape) and shape and shape[0] == 1 and array.shape[0] != 1:
        for i in range(array.shape[0]):
            yield f"{label}[{i}]", {name: array[i : i + 1]}
    else:
        yield label, {name: array}


def iter_requests(
    paths: Iterable[str | Path], input_names: Sequence[str], shapes: Sequence[Any]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, inputs) per request from files and directories, in the order given (directories sorted)."""
    from splitinf.errors import InputError

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
            if not files:
                raise InputError(f"{path} holds no .npy or .npz files")
        elif path.exists():
            files = [path]
        else:
            raise InputError(f"{path} does not exist")
        for file in files:
            for kind, content in _load_file(file):
                if kind == "npz" and len(input_names) > 1 and set(content) == set(input_names):
                    yield str(file), content
                    continue
                if len(input_names) != 1:
                    raise InputError(
                        f"{file}: the plan has inputs {list(input_names)}; give a .npz with exactly those keys"
                    )
                arrays = content.items() if kind == "npz" else [("", content)]
                for key, array in arrays:
                    label = f"{file}:{key}" if key else str(file)
                    yield from _requests_from_array(label, array, input_names[0], shapes[0])


def _watch(directory: Path, interval: float, max_files: int) -> Iterator[Path]:
    seen: set[Path] = set()
    count = 0
    while True:
        fresh = sorted(p for p in directory.iterdir() if p.suffix in (".npy", ".npz") and p not in seen)
        for path in fresh:
            seen.add(path)
            count += 1
            yield path
            if max_files and count >= max_files:
                return
        if not fresh:
            time.sleep(interval)  # polling a directory: there is no event to wait on portably


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def run(args: argparse.Namespace) -> int:
    from splitinf.edge.config import DeviceConfig, load_device_config
    from splitinf.edge.runtime import Runtime
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
    if not args.inputs and not args.watch:
        raise UsageError("give INPUT files or directories, or --watch DIR")
    runtime = Runtime(args.plan, config)
    try:
        if args.metrics_port is not None or config.metrics_port is not None:
            port = runtime.start_metrics_server(args.metrics_port)
            print(f"metrics: http://{config.metrics_host}:{port}/metrics", file=sys.stderr)
        names = [s.name for s in runtime.plan.inputs]
        shapes = [s.shape for s in runtime.plan.inputs]
        if args.watch:
            watch_dir = Path(args.watch)
            if not watch_dir.is_dir():
                raise UsageError(f"--watch {watch_dir} is not a directory")
            requests = iter_requests(_watch(watch_dir, args.watch_interval, args.max_files), names, shapes)
        else:
            requests = iter_requests(args.inputs, names, shapes)
        return _answer(runtime, requests, args)
    finally:
        runtime.close()


def _answer(runtime: Any, requests: Iterator[tuple[str, dict[str, Any]]], args: argparse.Namespace) -> int:
    paths: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    latencies: list[float] = []
    labels: list[str] = []

    def inputs() -> Iterator[dict[str, Any]]:
        for label, request in requests:
            labels.append(label)
            yield request

    started = time.perf_counter()
    results = runtime.infer_stream(inputs()) if args.stream else (runtime.infer(r) for r in inputs())
    for index, result in enumerate(results):
        label = labels[index]
        paths[result.option_id] += 1
        latencies.append(result.latency.total_s)
        if result.fallback_reason:
            reasons[result.fallback_reason] += 1
        lat = result.latency
        if args.json:
            record = {
                "input": label,
                "path": result.option_id,
                "kind": result.kind,
                "mode": result.mode,
                "fallback_reason": result.fallback_reason,
                "latency_ms": {k.removesuffix("_s"): round(v * 1000, 3) for k, v in lat.__dict__.items()},
                "top": int(next(iter(result.outputs.values())).argmax()),
            }
            print(json.dumps(record), flush=True)
        else:
            stages = (
                ("head", lat.head_s),
                ("net", lat.network_s),
                ("server", lat.server_s),
                ("on-device", lat.local_s),
            )
            detail = " ".join(f"{name} {_ms(seconds)}" for name, seconds in stages if seconds)
            why = f"  [fell back: {result.fallback_reason}]" if result.fallback_reason else ""
            print(f"{label}  {result.option_id}  {_ms(lat.total_s)}  ({detail}){why}", flush=True)
    wall = time.perf_counter() - started
    summary = {
        "requests": len(latencies),
        "paths": dict(paths),
        "fallbacks": dict(reasons),
        "mode": runtime.mode.value,
        "mode_changes": sum(1 for e in runtime.events if e.kind == "mode"),
        "p50_ms": round(statistics.median(latencies) * 1000, 3) if latencies else None,
        "p95_ms": round(_percentile(latencies, 0.95) * 1000, 3) if latencies else None,
        "wall_s": round(wall, 3),
    }
    if args.json:
        print(json.dumps({"summary": summary}))
    else:
        print(
            f"summary: {summary['requests']} requests in {wall:.2f} s; paths {dict(paths)}; "
            f"fallbacks {dict(reasons) or 'none'}; p50 {summary['p50_ms']} ms, p95 {summary['p95_ms']} ms; "
            f"mode now {summary['mode']} after {summary['mode_changes']} change(s)"
        )
    return 0


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]
