"""Plan directories written by hand, for tests of the device runtime and of whole systems.

``splitinf plan`` measures profiles and calibrates codecs; a test that is about the
runtime, the policy or the network wants a plan whose costs it chooses itself.
``write_plan_dir`` splits a model at the given cuts (fp32), writes the device's chain of
segments (each weight once, as ``splitinf plan`` does), the tails (as a V2 model repository
under ``server/``), the fallback and optionally the full model (the segments on to the
outputs), and a ``plan.json`` in the layout ``splitinf.contract.plan`` documents.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from splitinf.contract.files import write_json_atomic
from splitinf.contract.manifest import MANIFEST_FORMAT
from splitinf.contract.plan import Option, Plan, content_addressed_name
from splitinf.offline.graph import GraphView
from splitinf.offline.partition import save_model, split_model, write_to_repository
from splitinf.offline.planner import io_specs, option_names
from splitinf.offline.segments import OUTPUTS_END, write_chain
from splitinf.ort import open_session
from splitinf.tools.testing.graphs import mlp

__all__ = [
    "DIGITS_CALIBRATION",
    "MLP_CUTS",
    "MLP_FALLBACK",
    "MLP_FULL",
    "run_mlp",
    "split_option",
    "write_digits_plan_dir",
    "write_mlp_plan_dir",
    "write_plan_dir",
]


def split_option(
    name: str, nbytes: int, accuracy: float | None, head_s: float = 0.001, tail_s: float = 0.001
) -> Option:
    """A split option with the costs a test chooses and no files: for the decision rule and the policy."""
    return Option(
        id=f"split:{name}:fp32",
        kind="split",
        accuracy=accuracy,
        cut_id=name,
        codec="fp32",
        head=(f"device/segments/{name}.onnx",),
        tail_model=f"m.{name}",
        wire_bytes=nbytes,
        head_seconds=head_s,
        tail_seconds=tail_s,
    )


def write_plan_dir(
    root: Path,
    model: onnx.ModelProto,
    fallback: onnx.ModelProto,
    cuts: Mapping[str, tuple[float, float]],
    *,
    name: str = "model",
    accuracy: float = 0.95,
    fallback_accuracy: float = 0.8,
    fallback_seconds: float = 0.001,
    local_seconds: float | None = None,
    served_tails: Mapping[str, onnx.ModelProto] | None = None,
) -> Plan:
    """Write a plan directory at ``root`` and return the plan.

    ``cuts`` maps a cut (an id or tensor names, as ``splitinf.offline.graph.find_cut`` takes) to the
    (head_seconds, tail_seconds) the plan declares for it. ``local_seconds`` adds the full model
    as the local option. ``served_tails`` deploys another model in place of a cut's tail while
    the plan keeps the true tail's sha256: a server holding a tail from another partition.
    """
    view = GraphView(model)
    found = {cut_name: view.find(cut_name) for cut_name in cuts}
    chain = write_chain(root, view, list(found.values()), to_outputs=local_seconds is not None)
    options: list[Option] = []
    for cut_name, (head_seconds, tail_seconds) in cuts.items():
        cut = found[cut_name]
        part = split_model(model, cut)
        option_id, _, base_name = option_names(name, cut.id, "fp32")
        tail_sha = hashlib.sha256(part.tail.SerializeToString()).hexdigest()  # what save_model writes
        tail_name = content_addressed_name(base_name, tail_sha)  # as the planner names tails
        # The server's copy is signed (manifest.json) as `splitinf split --repo` signs it;
        # the plan keeps the true tail's sha256.
        served = (served_tails or {}).get(cut_name, part.tail)
        write_to_repository(served, root / "server", tail_name, "1", manifest={"format": MANIFEST_FORMAT})
        head = chain.up_to(cut.id)
        options.append(
            Option(
                id=option_id,
                kind="split",
                accuracy=accuracy,
                cut_id=cut.id,
                codec="fp32",
                head=tuple(path for path, _ in head),
                head_sha256=tuple(sha for _, sha in head),
                tail_model=tail_name,
                tail_sha256=tail_sha,
                wire=cut.tensors,
                wire_bytes=cut.bytes_per_sample,
                head_seconds=head_seconds,
                tail_seconds=tail_seconds,
            )
        )
    if local_seconds is not None:
        files = chain.up_to(OUTPUTS_END)
        options.append(
            Option(
                id="local",
                kind="local",
                accuracy=accuracy,
                model=tuple(path for path, _ in files),
                sha256=tuple(sha for _, sha in files),
                seconds=local_seconds,
            )
        )
    sha = save_model(fallback, root / "device" / "fallback.onnx")
    options.append(
        Option(
            id="fallback",
            kind="fallback",
            accuracy=fallback_accuracy,
            model=("device/fallback.onnx",),
            sha256=(sha,),
            seconds=fallback_seconds,
        )
    )
    source_sha = save_model(model, root / "source" / "model.onnx")
    inputs, outputs = io_specs(model)
    plan = Plan(name, source_sha, inputs, outputs, tuple(options))
    write_json_atomic(root / "plan.json", plan.to_json())
    return plan


MLP_FULL = mlp(batch=1, seed=0)
MLP_FALLBACK = mlp(batch=1, seed=7, sizes=(16, 8, 4))
MLP_CUTS = ("x", "relu_0", "relu_1")  # full offload, early, late


def write_mlp_plan_dir(
    root: Path,
    cuts: Sequence[str] = MLP_CUTS,
    *,
    local: bool = True,
    served_tails: dict[str, onnx.ModelProto] | None = None,
    accuracy: float = 0.95,
) -> Path:
    """A plan of MLP_FULL at ``cuts`` with MLP_FALLBACK (and MLP_FULL as the local option unless ``local`` is False).

    ``served_tails`` replaces the tail deployed for a cut id (the plan keeps the true tail's
    sha256), to build a server that holds a tail from another partition.
    """
    write_plan_dir(
        root,
        MLP_FULL,
        MLP_FALLBACK,
        dict.fromkeys(cuts, (0.0001, 0.0001)),
        name="mlp",
        accuracy=accuracy,
        fallback_accuracy=0.80,
        fallback_seconds=0.001,
        local_seconds=5 if local else None,
        served_tails=served_tails,
    )
    return root


def run_mlp(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """``y`` of an MLP from ``splitinf.tools.testing.graphs.mlp`` for input ``x``."""
    session = open_session(model.SerializeToString())
    return np.asarray(session.run(["y"], {"x": x})[0])


DIGITS_CALIBRATION = 60  # the first held-out digits calibrate the codecs; tests and benches use the rest


def write_digits_plan_dir(root: Path, *, hold_all: bool = False) -> Path:
    """The shipped digits pair planned by the planner (profiled on this machine, no local option) at ``root/plan``.

    ``hold_all`` keeps every cut and codec (the fp32 full offload among them), not just the table's picks.
    """
    from splitinf.offline.planner import plan_model
    from splitinf.offline.profiling import profile_file
    from splitinf.tools.models import DIGITS_INPUT, digits_fallback_path, digits_main_path, load_digits_test

    root.mkdir(parents=True, exist_ok=True)
    images, labels = load_digits_test()
    calibration = root / "calibration.npz"
    arrays: dict[str, Any] = {DIGITS_INPUT: images[:DIGITS_CALIBRATION], "labels": labels[:DIGITS_CALIBRATION]}
    np.savez(calibration, **arrays)
    profile_file(digits_main_path(), root / "profile.json", fallback=digits_fallback_path(), repeats=5)
    plan_model(
        digits_main_path(),
        device_profile=root / "profile.json",
        server_profile=root / "profile.json",
        fallback=digits_fallback_path(),
        calibration=calibration,
        output=root / "plan",
        include_local=False,
        hold_all=hold_all,
    )
    return root / "plan"
