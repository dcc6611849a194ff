"""Plan directories written by hand, for tests of the device runtime and of whole systems.

``splitinf plan`` measures profiles and calibrates codecs; a test that is about the
runtime, the policy or the network wants a plan whose costs it chooses itself.
``write_plan_dir`` splits a model at the given cuts (fp32), writes the heads, the
tails (as a V2 model repository under ``server/``), the fallback and optionally the
full model, and a ``plan.json`` in the layout ``splitinf.plan`` documents.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import onnx

from splitinf.graph import find_cut
from splitinf.partition import save_model, split_model
from splitinf.plan import Option, Plan, write_json_atomic
from splitinf.planner import io_specs, option_names

__all__ = ["write_plan_dir"]


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

    ``cuts`` maps a cut (an id or tensor names, as ``splitinf.graph.find_cut`` takes) to the
    (head_seconds, tail_seconds) the plan declares for it. ``local_seconds`` adds the full model
    as the local option. ``served_tails`` deploys another model in place of a cut's tail while
    the plan keeps the true tail's sha256: a server holding a tail from another partition.
    """
    options: list[Option] = []
    for cut_name, (head_seconds, tail_seconds) in cuts.items():
        cut = find_cut(model, cut_name)
        part = split_model(model, cut)
        option_id, head_rel, tail_name = option_names(name, cut.id, "fp32")
        tail_path = root / "server" / tail_name / "1" / "model.onnx"
        head_sha = save_model(part.head, root / head_rel)
        tail_sha = save_model(part.tail, tail_path)
        if served_tails and cut_name in served_tails:
            save_model(served_tails[cut_name], tail_path)
        options.append(
            Option(
                id=option_id,
                kind="split",
                accuracy=accuracy,
                cut_id=cut.id,
                codec="fp32",
                head=head_rel,
                head_sha256=head_sha,
                tail_model=tail_name,
                tail_sha256=tail_sha,
                wire=cut.tensors,
                bytes=cut.bytes_per_sample,
                head_seconds=head_seconds,
                tail_seconds=tail_seconds,
            )
        )
    if local_seconds is not None:
        sha = save_model(model, root / "device" / "local.onnx")
        options.append(
            Option(
                id="local",
                kind="local",
                accuracy=accuracy,
                model="device/local.onnx",
                sha256=sha,
                seconds=local_seconds,
            )
        )
    sha = save_model(fallback, root / "device" / "fallback.onnx")
    options.append(
        Option(
            id="fallback",
            kind="fallback",
            accuracy=fallback_accuracy,
            model="device/fallback.onnx",
            sha256=sha,
            seconds=fallback_seconds,
        )
    )
    source_sha = save_model(model, root / "source" / "model.onnx")
    inputs, outputs = io_specs(model)
    plan = Plan(name, source_sha, inputs, outputs, tuple(options))
    write_json_atomic(root / "plan.json", plan.to_json())
    return plan
