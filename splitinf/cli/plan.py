"""``splitinf plan MODEL.onnx --device DEV.json --server SRV.json -o PLANDIR``: build a plan directory.

Reads the two profiles (refusing ones of another model or missing cuts), applies each wire
codec to each profiled cut (calibrating 8-bit scales and measuring fidelity on sample inputs),
prices every option with the cost model, keeps the few cuts that are best somewhere on the
bandwidth x RTT grid (plus full offload), and writes the layout of :mod:`splitinf.plan`, with
``report.md`` and ``latency.svg`` beside ``plan.json``.

Samples (``--calibration``): an .npz with one array per model input, samples stacked on axis 0
(an array of the input's rank gives batch-1 slices; one rank more gives one sample per entry),
and optionally ``labels`` (one class per sample) for real accuracy instead of agreement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from splitinf.plan import Option, TensorSpec

DEFAULT_MAX_ACCURACY_DROP = 0.01


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="choose the cuts and codecs worth holding and write a plan directory",
        description=(
            "Combine a device profile and a server profile of MODEL into a plan: device heads, fallback, "
            "server tails in a V2 model repository, plan.json with the decision table, report.md and latency.svg."
        ),
    )
    parser.add_argument("model", help="the ONNX model (the one both profiles measured)")
    parser.add_argument("--device", required=True, help="profile written by `splitinf profile` on the device")
    parser.add_argument("--server", required=True, help="profile written by `splitinf profile` on the server")
    parser.add_argument("--fallback", help="the small local model the device answers from when the network fails")
    parser.add_argument("--codecs", help="wire codecs to weigh (default fp32,fp16 and int8 when --calibration)")
    parser.add_argument("--calibration", help=".npz of sample inputs (stacked on axis 0), optionally 'labels'")
    parser.add_argument("--held-out", help=".npz of held-out samples (default: the last quarter of --calibration)")
    parser.add_argument("--max-candidates", type=int, default=4, help="cuts held besides full offload (default 4)")
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=DEFAULT_MAX_ACCURACY_DROP,
        help="drop options whose accuracy is more than this below the full model's (default 0.01)",
    )
    parser.add_argument("--bandwidths", help="comma-separated grid in Mbit/s (default 0.25..1000, log-spaced)")
    parser.add_argument("--rtts", help="comma-separated grid in ms (default 1,5,10,20,50,100,200,300)")
    parser.add_argument("--reference-rtt", type=float, default=20.0, help="RTT in ms for the report's chart")
    parser.add_argument("--no-local", action="store_true", help="the full model does not fit on the device")
    parser.add_argument(
        "--hold-all",
        action="store_true",
        help="hold every evaluated option, not only the best few (for measuring them all; the table is unchanged)",
    )
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for calibration runs")
    parser.add_argument("-o", "--output", required=True, help="the plan directory to write")
    parser.set_defaults(handler=run)


def _floats(text: str | None, scale: float, flag: str) -> tuple[float, ...] | None:
    from splitinf.errors import UsageError

    if not text:
        return None
    try:
        values = tuple(float(v) * scale for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise UsageError(f"{flag} takes comma-separated numbers, got {text!r}") from exc
    if not values or any(v <= 0 for v in values):
        raise UsageError(f"{flag} needs positive numbers, got {text!r}")
    return tuple(sorted(values))


def read_samples(path: str, inputs: Sequence[TensorSpec]) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    """Samples and labels from an .npz (never unpickled); a PlanError names what is wrong."""
    import numpy as np

    from splitinf.errors import PlanError

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise PlanError(f"cannot read samples from {path}: {exc}; give an .npz of arrays named by input") from exc
    labels = arrays.pop("labels", None)
    missing = [t.name for t in inputs if t.name not in arrays]
    if missing:
        raise PlanError(f"{path} lacks arrays for the model input(s) {missing}; it has {sorted(arrays)}")
    counts = {}
    for spec in inputs:
        array = arrays[spec.name]
        if array.ndim not in (len(spec.shape), len(spec.shape) + 1):
            raise PlanError(
                f"{path}: {spec.name!r} has shape {list(array.shape)}, but the input is {list(spec.shape)}; "
                "stack samples on a first axis"
            )
        counts[spec.name] = array.shape[0]
    if len(set(counts.values())) > 1:
        raise PlanError(f"{path}: the inputs hold different numbers of samples: {counts}")
    n = next(iter(counts.values()), 0)
    if n == 0:
        raise PlanError(f"the calibration set {path} is empty; give at least one sample per input")
    samples = []
    for i in range(n):
        sample = {}
        for spec in inputs:
            array = arrays[spec.name]
            value = array[i : i + 1] if array.ndim == len(spec.shape) else array[i]
            sample[spec.name] = np.ascontiguousarray(value.astype(np.dtype(spec.dtype), copy=False))
        samples.append(sample)
    if labels is not None and labels.reshape(-1).size != n:
        raise PlanError(f"{path}: 'labels' has {labels.size} entries for {n} samples; give one label per sample")
    return samples, labels


def _random_samples(model: onnx.ModelProto, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    from splitinf.profiling import make_session, random_inputs

    session = make_session(model, 1)
    return [random_inputs(session, seed + i) for i in range(n)]


def _io_specs(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    from onnx import helper

    from splitinf.plan import TensorSpec

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor_type = value.type.tensor_type
        dims: list[int | str | None] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
        ]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        return TensorSpec(value.name, dtype, tuple(dims))

    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(spec(v) for v in model.graph.input if v.name not in initializers)
    return inputs, tuple(spec(v) for v in model.graph.output)


def _check_fallback(
    main: tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]],
    small: tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]],
    path: str,
) -> None:
    from splitinf.errors import PlanError

    def describe(specs: Sequence[TensorSpec]) -> list[str]:
        return [f"{s.name}:{s.dtype}{list(s.shape)}" for s in specs]

    def same(a: Sequence[TensorSpec], b: Sequence[TensorSpec]) -> bool:
        if [(s.name, s.dtype, len(s.shape)) for s in a] != [(s.name, s.dtype, len(s.shape)) for s in b]:
            return False
        for sa, sb in zip(a, b, strict=True):
            for da, db in zip(sa.shape, sb.shape, strict=True):
                if isinstance(da, int) and isinstance(db, int) and da != db:
                    return False
        return True

    for what, a, b in (("inputs", main[0], small[0]), ("outputs", main[1], small[1])):
        if not same(a, b):
            raise PlanError(
                f"the fallback {path} has {what} {describe(b)}, but the model has {describe(a)}; "
                "the fallback must take and return the same tensors"
            )


def _accuracy(
    outputs: Sequence[Mapping[str, np.ndarray]],
    reference: Sequence[Mapping[str, np.ndarray]],
    labels: np.ndarray | None,
) -> float | None:
    from splitinf.codecs import compare_outputs, label_accuracy

    if labels is not None:
        return label_accuracy(outputs, labels)
    agreement = compare_outputs(reference, outputs)["top1_agreement"]
    return None if agreement is None else float(agreement)


def _prepare_output(target: Path) -> Path:
    """A fresh directory beside ``target`` to build in; refuses to replace anything but a plan."""
    from splitinf.errors import OutputError

    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / "plan.json").exists())):
        raise OutputError(f"{target} exists and is not a plan directory; choose another -o or remove it")
    parent = target.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"the parent of {target} does not exist; create it first")
    try:
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write in {parent}: {exc.strerror or exc}") from exc


def _publish(build: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(build, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _save(model: onnx.ModelProto, path: Path) -> str:
    import onnx

    from splitinf.plan import sha256_file

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return sha256_file(path)


def _profile_summary(profile: Mapping[str, Any], source: str) -> dict[str, Any]:
    return {
        "source": source,
        "machine": profile.get("machine"),
        "onnxruntime": profile.get("onnxruntime"),
        "settings": profile.get("settings"),
        "model_seconds": profile.get("model_seconds"),
    }


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from splitinf import codecs, planner
    from splitinf.errors import PlanError, UsageError
    from splitinf.graph import enumerate_cuts, load_model
    from splitinf.partition import split_model, write_to_repository
    from splitinf.plan import Option, Plan, load_plan, sha256_file, write_json_atomic
    from splitinf.profiling import load_profile, make_session, time_callable
    from splitinf.report import latency_svg, report_markdown

    if args.max_candidates < 0:
        raise UsageError(f"--max-candidates must be >= 0, got {args.max_candidates}")
    bandwidths = _floats(args.bandwidths, 1e6, "--bandwidths") or planner.DEFAULT_BANDWIDTHS_BPS
    rtts = _floats(args.rtts, 1e-3, "--rtts") or planner.DEFAULT_RTTS_S
    target = Path(args.output)
    model_path = Path(args.model)
    model = load_model(model_path)
    model_sha = sha256_file(model_path)
    name = model_path.stem
    device = load_profile(args.device)
    server = load_profile(args.server)
    planner.check_profile(device, role="device", model_sha256=model_sha, source=args.device)
    planner.check_profile(server, role="server", model_sha256=model_sha, source=args.server)
    inputs, outputs = _io_specs(model)

    fallback_model = None
    if args.fallback:
        fallback_model = load_model(args.fallback)
        _check_fallback((inputs, outputs), _io_specs(fallback_model), args.fallback)

    labels = None  # the labels of the samples accuracy is measured on, when given
    if args.calibration:
        samples, all_labels = read_samples(args.calibration, inputs)
        if args.held_out:
            calibration = samples
            held, labels = read_samples(args.held_out, inputs)
        else:
            n_held = len(samples) // 4
            calibration, held = samples[: len(samples) - n_held], samples[len(samples) - n_held :]
            if all_labels is not None:
                labels = all_labels.reshape(-1)[len(samples) - n_held :] if n_held else all_labels.reshape(-1)
        sample_source = "calibration"
    else:
        calibration, held = _random_samples(model, 6), _random_samples(model, 6, seed=100)
        sample_source = "random"
    codec_names = codecs.parse_codecs(args.codecs or ("fp32,fp16,int8" if args.calibration else "fp32,fp16"))
    if not args.calibration and any(c in codecs.QUANTIZED for c in codec_names):
        raise PlanError("the int8/uint8 codecs need sample inputs to calibrate their scales; give --calibration")
    evaluation = held or calibration  # accuracy estimates come from held-out samples when there are any
    reference = {"calibration": codecs.run_model(model, calibration), "held_out": codecs.run_model(model, held)}
    eval_reference = reference["held_out"] if held else reference["calibration"]

    cuts = {cut.id: cut for cut in enumerate_cuts(model)}
    input_cut = next(iter(cuts))
    cut_ids = planner.profiled_cut_ids(device)
    unknown = [c for c in cut_ids if c not in cuts]
    if unknown:
        raise PlanError(f"the device profile names cuts this model lacks: {unknown}; re-profile this model")
    if input_cut not in cut_ids:
        raise PlanError(
            f"the device profile lacks the input cut {input_cut} (full offload), which every plan weighs; "
            "re-run `splitinf profile` without --cuts or with it included"
        )

    local_accuracy = 1.0 if labels is None else _accuracy(codecs.run_model(model, evaluation), eval_reference, labels)
    min_accuracy = None if local_accuracy is None else local_accuracy - args.max_accuracy_drop
    splits: list[Option] = []
    encoded_by_id: dict[str, codecs.Encoded] = {}
    for cut_id in cut_ids:
        partition = split_model(model, cuts[cut_id])
        for codec in codec_names:
            dev = planner.profile_cut_codec(device, cut_id, codec, role="device", source=args.device)
            srv = planner.profile_cut_codec(server, cut_id, codec, role="server", source=args.server)
            quant = codecs.calibrate(partition, calibration, codec, args.threads) if codec in codecs.QUANTIZED else None
            encoded = codecs.encode(partition, codec, quant)
            fidelity = codecs.fidelity(model, encoded, calibration, held, args.threads, reference=reference)
            fidelity["samples"] = sample_source
            if labels is None:  # agreement with the full model, on held-out samples when there are any
                accuracy = fidelity["held_out" if held else "calibration"]["top1_agreement"]
            else:
                accuracy = _accuracy(codecs.run_encoded(encoded, evaluation, args.threads)[0], eval_reference, labels)
            option_id, head_path, tail_model = planner.option_names(name, cut_id, codec)
            splits.append(
                Option(
                    id=option_id,
                    kind="split",
                    cut_id=cut_id,
                    codec=codec,
                    head=head_path,
                    tail_model=tail_model,
                    wire=encoded.wire,
                    bytes=int(fidelity["bytes_per_sample"] or encoded.bytes_per_sample),
                    head_seconds=float(dev["head"]["median"]),
                    tail_seconds=float(srv["tail"]["median"]),
                    serialize_seconds=float(dev.get("serialize", {}).get("median", 0.0)),
                    accuracy=accuracy,
                    fidelity=fidelity,
                )
            )
            encoded_by_id[option_id] = encoded

    local = None
    if not args.no_local:
        local = Option(
            id="local",
            kind="local",
            model="device/local.onnx",
            seconds=float(device["model_seconds"]["median"]),
            accuracy=local_accuracy,
        )
    fallback = None
    if fallback_model is not None:
        fallback_profile = device.get("fallback") or {}
        fallback_sha = sha256_file(args.fallback)
        if fallback_profile.get("sha256") == fallback_sha:
            fallback_seconds = float(fallback_profile["seconds"]["median"])
            seconds_source = "device profile"
        else:
            session = make_session(fallback_model, device.get("onnxruntime", {}).get("threads") or None)
            feed = calibration[0]
            fallback_seconds = time_callable(lambda: session.run(None, feed), repeats=20, warmup=3).median
            seconds_source = "measured on the planning machine (profile the fallback on the device for real figures)"
        fallback = Option(
            id="fallback",
            kind="fallback",
            model="device/fallback.onnx",
            seconds=fallback_seconds,
            accuracy=_accuracy(codecs.run_model(fallback_model, evaluation), eval_reference, labels),
            fidelity={"seconds_source": seconds_source},
        )

    full_offload = {o.id for o in splits if o.cut_id == input_cut}
    held_splits = planner.select_candidates(
        splits,
        full_offload=full_offload,
        local=local,
        bandwidths_bps=bandwidths,
        rtts_s=rtts,
        max_candidates=args.max_candidates,
        min_accuracy=min_accuracy,
    )
    table_options = held_splits + ([local] if local is not None else [])
    table = planner.decision_table(table_options, bandwidths, rtts)
    if args.hold_all:
        held_splits = splits

    build = _prepare_output(target)
    try:
        written: list[Option] = []
        for option in held_splits:
            encoded = encoded_by_id[option.id]
            assert option.head is not None and option.tail_model is not None
            head_sha = _save(encoded.head, build / option.head)
            manifest = {
                "format": 1,
                "source": {"name": name, "sha256": model_sha},
                "cut": {
                    "id": option.cut_id,
                    "tensors": [t.to_json() for t in encoded.cut.tensors],
                    "bytes": int(encoded.cut.bytes_per_sample),
                },
                "codec": option.codec,
                "wire": [t.to_json() for t in encoded.wire],
                "opset": [{"domain": o.domain, "version": o.version} for o in encoded.tail.opset_import],
                "ir_version": encoded.tail.ir_version,
                "parts": {"head": {"file": option.head, "sha256": head_sha}},
            }
            tail_path = write_to_repository(encoded.tail, build / "server", option.tail_model, "1", manifest)
            written.append(
                dataclasses.replace(option, head_sha256=head_sha, tail_version="1", tail_sha256=sha256_file(tail_path))
            )
        if local is not None:
            written.append(dataclasses.replace(local, sha256=_save(model, build / "device" / "local.onnx")))
        if fallback is not None and fallback_model is not None:
            written.append(dataclasses.replace(fallback, sha256=_save(fallback_model, build / "device/fallback.onnx")))
        plan = Plan(
            model_name=name,
            model_sha256=model_sha,
            inputs=inputs,
            outputs=outputs,
            options=tuple(written),
            table=table,
            profiles={
                "device": _profile_summary(device, args.device),
                "server": _profile_summary(server, args.server),
                "evaluated": {
                    "codecs": list(codec_names),
                    "cuts": cut_ids,
                    "options": len(splits),
                    "samples": sample_source,
                    "calibration_samples": len(calibration),
                    "held_out_samples": len(held),
                    "accuracy": "labels" if labels is not None else "top-1 agreement with the full model",
                    "min_accuracy": min_accuracy,
                    "not_held": [
                        {
                            "id": o.id,
                            "bytes": o.bytes,
                            "head_seconds": o.head_seconds,
                            "tail_seconds": o.tail_seconds,
                            "accuracy": o.accuracy,
                        }
                        for o in splits
                        if o.id not in {h.id for h in held_splits}
                    ],
                },
            },
        )
        write_json_atomic(build / "plan.json", plan.to_json())
        reference_rtt = args.reference_rtt * 1e-3
        (build / "report.md").write_text(report_markdown(plan, reference_rtt))
        (build / "latency.svg").write_text(latency_svg(plan, reference_rtt))
        load_plan(build, check_files=("device", "server"))
        _publish(build, target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    print(
        f"wrote {target}: {len(held_splits)} split options held of {len(splits)} evaluated "
        f"({', '.join(o.id for o in held_splits)}); see {target / 'report.md'}"
    )
    return 0
