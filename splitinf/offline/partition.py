"""Cut a model into head and tail, verify the pair against the full model, and write it out.

``split_model`` is pure (ModelProto in, ModelProto out). The head takes every graph input
of the original and outputs exactly the cut tensors; the tail takes exactly the cut
tensors and outputs every graph output. Each part carries the constants (initializers,
Constant nodes and constant subgraphs) its own nodes need, so weights never cross the
cut. Opset imports, IR version, producer, doc string, metadata and local functions are
kept; both parts also get the metadata ``splitinf.cut`` (the cut id).

``export_partition`` and ``write_to_repository`` are the thin file wrappers: they write
into a temporary directory beside the destination and rename it into place, so a failure
leaves nothing behind. A part over 2 GiB is saved with its weights in an external data
file next to it (``head.onnx.data``/``tail.onnx.data``); the manifest records the sha256 of
both files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper

from splitinf.contract.files import sha256_file, staged_directory
from splitinf.contract.manifest import MANIFEST_FILE, build_manifest, part_entry, with_part, write_manifest
from splitinf.contract.samples import read_samples
from splitinf.contract.tensors import TensorSpec, check_tensors
from splitinf.errors import CutError, InputError, OutputError, VerificationError
from splitinf.offline.graph import NONDETERMINISTIC_OPS, PROTOBUF_LIMIT, Cut, GraphView, load_model, spec_value_info
from splitinf.offline.inputs import model_inputs, run_checked
from splitinf.ort import SessionSettings, open_session

__all__ = [
    "Partition",
    "VerifyReport",
    "export_partition",
    "part_model",
    "save_model",
    "split_model",
    "verify_partition",
    "write_to_repository",
]

# head -> tail runs the same kernels as the full model (graph optimisations are off while
# verifying), so fp32 outputs agree to rounding; anything above this is a wrong partition.
REL_TOLERANCE = 1e-5


@dataclass
class Partition:
    cut: Cut
    head: onnx.ModelProto
    tail: onnx.ModelProto


@dataclass(frozen=True)
class VerifyReport:
    max_abs_error: float
    max_rel_error: float  # largest |full - split| over the largest |full|, per output
    samples: int  # input sets compared (random + user samples)

    def to_json(self) -> dict[str, Any]:
        return {"max_abs_error": self.max_abs_error, "max_rel_error": self.max_rel_error, "samples": self.samples}


# ----------------------------------------------------------------------------- split


def part_model(
    view: GraphView,
    nodes: set[int],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    suffix: str,
    cut_id: str,
) -> onnx.ModelProto:
    """A model running the dynamic ``nodes`` of ``view`` from ``inputs`` to ``outputs``, with the constants
    they need; its metadata ``splitinf.cut`` is ``cut_id``. A head, a tail, or a segment between two cuts."""
    source = view.model
    # graph outputs that are constants are computed (or stored) by the tail itself
    const_nodes, initializer_names = view.constant_closure(nodes, [o.name for o in outputs])
    chosen = sorted(nodes | const_nodes)
    graph = onnx.GraphProto()
    graph.name = f"{source.graph.name}_{suffix}" if source.graph.name else suffix
    graph.doc_string = source.graph.doc_string
    for index in chosen:
        if index in view.static_values:
            static = view.nodes[index]
            value = onnx.numpy_helper.from_array(view.static_values[index], static.output[0])
            graph.node.append(
                onnx.helper.make_node("Constant", [], [static.output[0]], name=static.name or None, value=value)
            )
        else:
            graph.node.append(view.nodes[index])
    graph.input.extend(inputs)
    graph.output.extend(outputs)
    graph.initializer.extend(view.initializers[n] for n in sorted(initializer_names) if n in view.initializers)
    graph.sparse_initializer.extend(
        view.sparse_initializers[n] for n in sorted(initializer_names) if n in view.sparse_initializers
    )
    known = {o for i in chosen for o in view.nodes[i].output}
    io_names = {v.name for v in inputs} | {v.name for v in outputs}
    graph.value_info.extend(v for v in source.graph.value_info if v.name in known and v.name not in io_names)
    if source.ir_version < 4:
        # before IR 4 every initializer had to be listed as a graph input too
        graph.input.extend(
            onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in graph.initializer
        )

    model = onnx.ModelProto()
    model.ir_version = source.ir_version
    model.opset_import.extend(source.opset_import)
    model.producer_name = source.producer_name
    model.producer_version = source.producer_version
    model.domain = source.domain
    model.model_version = source.model_version
    model.doc_string = source.doc_string
    model.functions.extend(source.functions)
    model.metadata_props.extend(p for p in source.metadata_props if p.key != "splitinf.cut")
    entry = model.metadata_props.add()
    entry.key, entry.value = "splitinf.cut", cut_id
    model.graph.CopyFrom(graph)
    return model


def _split(view: GraphView, cut: Cut) -> Partition:
    names = list(cut.names)
    view.check_cut_names(names)
    tail_nodes = view.tail_nodes_for(set(names))
    head_nodes = view.head_nodes_for(names)
    for index in sorted(head_nodes & tail_nodes):
        node = view.nodes[index]
        if node.op_type in NONDETERMINISTIC_OPS:
            raise CutError(
                f"{node.op_type} node {node.name or node.output[0]!r} would run on both sides and draw different "
                f"numbers; add its output {node.output[0]!r} to the cut"
            )
    originals = {v.name: v for v in [*view.model.graph.input, *view.model.graph.output, *view.model.graph.value_info]}

    specs = {t.name: t for t in cut.tensors}

    def info(name: str) -> onnx.ValueInfoProto:
        if name in view.types:
            return view.value_info(name)
        if name in specs:  # typed by a run on sample inputs (GraphView with feeds)
            return spec_value_info(specs[name])
        return originals[name]

    cut_infos = [info(n) for n in names]
    head = part_model(view, head_nodes, view.inputs, cut_infos, "head", cut.id)
    tail = part_model(view, tail_nodes, cut_infos, list(view.model.graph.output), "tail", cut.id)
    return Partition(cut=cut, head=head, tail=tail)


def split_model(model: onnx.ModelProto, cut: Cut) -> Partition:
    """Head and tail of ``model`` at ``cut`` (pure; CutError when the cut does not fit the model)."""
    return _split(GraphView(model), cut)


# ----------------------------------------------------------------------------- verify


def _model_bytes(model: onnx.ModelProto) -> int:
    # each piece is under 2 GiB, so sizing them one by one never overflows
    weights = sum(t.ByteSize() for t in model.graph.initializer)
    return weights + sum(n.ByteSize() for n in model.graph.node)


# The same kernels on both sides of the comparison: fusions across the cut would differ.
_VERIFY_SETTINGS = SessionSettings(graph_optimization="disable")


@contextlib.contextmanager
def _session(model: onnx.ModelProto) -> Iterator[Any]:
    if _model_bytes(model) < PROTOBUF_LIMIT:
        yield open_session(model.SerializeToString(), _VERIFY_SETTINGS)
        return
    with tempfile.TemporaryDirectory(prefix="splitinf-verify-") as tmp:
        path = Path(tmp) / "model.onnx"
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        onnx.save_model(copy, str(path), save_as_external_data=True, location="model.onnx.data")
        yield open_session(path, _VERIFY_SETTINGS)


def _check_sample(view: GraphView, sample: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The sample as feeds; the one tensor check (``contract.tensors``) names what does not fit."""
    feeds = {name: np.asarray(value) for name, value in sample.items()}
    specs = []
    for name in view.input_names:
        spec = view.spec(name)
        if spec is None and name in feeds:  # an input shape inference could not type: the sample's own
            spec = TensorSpec(name, feeds[name].dtype.name, feeds[name].shape)
        specs.append(spec or TensorSpec(name, "float32", ()))
    check_tensors(specs, feeds, InputError, what="sample input")
    return feeds


def _verify(
    view: GraphView,
    partition: Partition,
    samples: Sequence[Mapping[str, np.ndarray]] | None,
    n_random: int,
    seed: int,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> VerifyReport:
    feeds_list = [_check_sample(view, s) for s in samples or ()]
    if n_random:
        # batch 2 and varied integers, so a part that mixes up the batch axis or an index fails the check
        drawn = model_inputs(view.input_specs(), shapes=shapes, count=n_random, batch=2, integers="small", seed=seed)
        feeds_list = list(drawn.samples) + feeds_list
    max_abs = 0.0
    max_rel = 0.0
    with _session(view.model) as full, _session(partition.head) as head, _session(partition.tail) as tail:
        output_names = [o.name for o in full.get_outputs()]
        head_outputs = [o.name for o in head.get_outputs()]
        head_inputs = {i.name for i in head.get_inputs()}
        for feeds in feeds_list:
            expected = dict(zip(output_names, run_checked(full, feeds), strict=True))
            head_feeds = {k: v for k, v in feeds.items() if k in head_inputs}
            crossing = dict(zip(head_outputs, run_checked(head, head_feeds, "the head"), strict=True))
            got = dict(zip([o.name for o in tail.get_outputs()], run_checked(tail, crossing, "the tail"), strict=True))
            for name in output_names:
                want, have = np.asarray(expected[name]), np.asarray(got[name])
                if want.shape != have.shape or want.dtype != have.dtype:
                    raise VerificationError(
                        f"output {name!r}: full model gives {want.dtype}{list(want.shape)}, "
                        f"head -> tail gives {have.dtype}{list(have.shape)}"
                    )
                if want.dtype.kind not in "fc":
                    if not np.array_equal(want, have):
                        raise VerificationError(f"output {name!r} ({want.dtype}) differs between full and head -> tail")
                    continue
                if not np.array_equal(np.isnan(want), np.isnan(have)):
                    raise VerificationError(f"output {name!r} has NaNs in different places in full and head -> tail")
                finite = ~np.isnan(want)
                diff = np.abs(want[finite].astype(np.float64) - have[finite].astype(np.float64))
                abs_error = float(diff.max()) if diff.size else 0.0
                scale = float(np.abs(want[finite]).max()) if diff.size else 0.0
                rel_error = abs_error / scale if scale > 0 else abs_error
                max_abs = max(max_abs, abs_error)
                max_rel = max(max_rel, rel_error)
    report = VerifyReport(max_abs_error=max_abs, max_rel_error=max_rel, samples=len(feeds_list))
    if max_rel > REL_TOLERANCE:
        raise VerificationError(
            f"head -> tail differs from the full model at cut {partition.cut.id!r}: max abs error {max_abs:.3g}, "
            f"max rel error {max_rel:.3g} (tolerance {REL_TOLERANCE:g})"
        )
    return report


def verify_partition(
    model: onnx.ModelProto,
    partition: Partition,
    samples: Sequence[Mapping[str, np.ndarray]] | None = None,
    n_random: int | None = None,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> VerifyReport:
    """Run the full model and head -> tail with onnxruntime on ``samples`` (each a mapping from input
    name to array) and on ``n_random`` random input sets at ``shapes`` (batch 2, small integers:
    :func:`splitinf.offline.inputs.model_inputs`; default 4 without samples, none with them);
    VerificationError beyond float rounding, InputError when onnxruntime cannot run the inputs."""
    if n_random is None:
        n_random = 0 if samples else 4
    return _verify(GraphView(model), partition, samples, n_random, seed, shapes)


# ----------------------------------------------------------------------------- write


def save_model(model: onnx.ModelProto, path: Path) -> str:
    """Write ``model`` to ``path`` (making its folder; over 2 GiB with its weights in ``path.data``)
    and return the sha256 of the ``.onnx`` file, the hash manifests and plans record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if _model_bytes(model) >= PROTOBUF_LIMIT:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        onnx.save_model(
            copy,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=1024,
        )
    else:
        path.write_bytes(model.SerializeToString())
    return sha256_file(path)


def export_partition(
    model_path: str | os.PathLike[str],
    cut_id: str | Sequence[str],
    outdir: str | os.PathLike[str],
    verify: bool = False,
    samples: Sequence[Mapping[str, np.ndarray]] | str | os.PathLike[str] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Write ``OUTDIR/head.onnx``, ``tail.onnx`` and ``manifest.json`` for a cut (id or tensor names).

    With ``verify`` or ``samples`` (input sets, or a path :func:`splitinf.contract.samples.read_samples`
    reads), checks head -> tail against the full model first (VerificationError) and records the
    errors under ``manifest["verify"]``: on the samples only when given, else on random inputs at
    ``shapes``. Returns the manifest.
    """
    path = Path(model_path)
    model = load_model(path)
    view = GraphView(model)
    if isinstance(samples, (str, os.PathLike)):
        samples, _ = read_samples(samples, view.input_specs())
    if samples or shapes:
        # at the user's inputs, so tensors only a run can type are found as they are by `splitinf cuts`
        view = GraphView(model, model_inputs(view.input_specs(), samples=samples, shapes=shapes).first)
    cut = view.find(cut_id)
    partition = _split(view, cut)
    report = _verify(view, partition, samples, 0 if samples else 4, 0, shapes) if verify or samples else None
    target = Path(outdir)
    with staged_directory(target) as tmp:
        part_sha256 = {}
        for part_name, part in (("head", partition.head), ("tail", partition.tail)):
            part_sha256[part_name] = save_model(part, tmp / f"{part_name}.onnx")
            try:
                # the path form checks parts of any size, external data included
                onnx.checker.check_model(str(tmp / f"{part_name}.onnx"))
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
                raise VerificationError(f"the {part_name} at cut {cut.id!r} fails onnx.checker: {exc}") from exc
        manifest = build_manifest(
            source_name=path.name,
            source_sha256=sha256_file(path),
            cut_id=cut.id,
            cut_tensors=cut.tensors,
            cut_bytes=cut.bytes_per_sample,
            codec="fp32",
            opset=[(o.domain, o.version) for o in partition.head.opset_import],
            ir_version=partition.head.ir_version,
            parts={name: part_entry(tmp / f"{name}.onnx", sha) for name, sha in part_sha256.items()},
        )
        if report is not None:
            manifest["verify"] = report.to_json()
        write_manifest(tmp, manifest)
    return manifest


def write_to_repository(
    model: onnx.ModelProto,
    repo_dir: str | os.PathLike[str],
    name: str,
    version: str = "1",
    manifest: dict[str, Any] | None = None,
) -> Path:
    """Write ``REPO/NAME/VERSION/model.onnx`` (a Triton-layout model repository) atomically, with
    ``manifest.json`` beside it when given; the manifest's ``parts.tail`` then names ``model.onnx``
    and its sha256. Returns the path of model.onnx."""
    if not name or "/" in name or name in (".", ".."):
        raise OutputError(f"model name {name!r} is not a plain directory name; choose one like 'resnet_tail'")
    target = Path(repo_dir) / name / str(version)
    with staged_directory(target, ours=("model.onnx", MANIFEST_FILE)) as tmp:
        model_sha256 = save_model(model, tmp / "model.onnx")
        if manifest is not None:
            write_manifest(tmp, with_part(manifest, "tail", part_entry(tmp / "model.onnx", model_sha256)))
    return target / "model.onnx"
