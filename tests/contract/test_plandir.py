"""The plan directory as a jail: every file the device opens is inside it and matches its sha256."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx.external_data_helper import _get_all_tensors as _all_tensors
from onnx.external_data_helper import convert_model_to_external_data, set_external_data

from splitinf.contract.files import sha256_file
from splitinf.contract.plan import load_plan
from splitinf.contract.plandir import external_data_locations
from splitinf.edge.runtime import Runtime
from splitinf.errors import IntegrityError, PlanError
from splitinf.tools.testing.graphs import if_model, mlp, residual_cnn
from splitinf.tools.testing.plans import write_mlp_plan_dir

SHA_KEYS = ("sha256", "head_sha256", "tail_sha256")
OTHER_MODEL = mlp(batch=1, seed=99, sizes=(16, 8, 4))  # not one the plan wrote


@pytest.fixture
def plan_dir(tmp_path: Path) -> Path:
    return write_mlp_plan_dir(tmp_path / "plan")


def edit_plan(plan_dir: Path, change: Any) -> None:
    data = json.loads((plan_dir / "plan.json").read_text())
    change(data)
    (plan_dir / "plan.json").write_text(json.dumps(data))


def split_option(data: dict[str, Any], cut: str = "relu_0") -> dict[str, Any]:
    return next(o for o in data["options"] if o.get("cut_id") == cut)


def first_head_file(plan_dir: Path) -> str:
    """The relu_0 head's first segment, which the later heads and the local model share."""
    return str(split_option(json.loads((plan_dir / "plan.json").read_text()))["head"][0])


def set_sha256(plan_dir: Path, relative: str, sha: str) -> None:
    """Record ``sha`` for ``relative`` in every option that runs it."""

    def change(data: dict[str, Any]) -> None:
        for option in data["options"]:
            for files, digests in (("head", "head_sha256"), ("model", "sha256")):
                for index, name in enumerate(option.get(files) or ()):
                    if name == relative:
                        option[digests][index] = sha

    edit_plan(plan_dir, change)


def test_a_plan_without_sha256_fields_is_refused_unless_marked_unsigned(
    plan_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def strip(data: dict[str, Any]) -> None:
        for option in data["options"]:
            for key in SHA_KEYS:
                option.pop(key, None)

    edit_plan(plan_dir, strip)
    onnx.save(OTHER_MODEL, plan_dir / "device" / "fallback.onnx")  # not the planner's
    with pytest.raises(PlanError, match=r"no sha256.*unsigned"):
        load_plan(plan_dir)
    with pytest.raises(PlanError, match="no sha256"):
        Runtime(plan_dir, background_probes=False)
    edit_plan(plan_dir, lambda data: data.update(unsigned=True))
    with caplog.at_level(logging.WARNING):
        load_plan(plan_dir)
    assert [r for r in caplog.records if "unsigned" in r.getMessage()], caplog.text


@pytest.mark.parametrize("which", ["fallback", "first segment", "last segment", "codec"])
def test_a_signed_plan_still_catches_a_changed_file(plan_dir: Path, which: str) -> None:
    data = json.loads((plan_dir / "plan.json").read_text())
    local = next(o for o in data["options"] if o["kind"] == "local")
    if which == "codec":  # a codec graph is a file of the head like a segment
        codec = "device/codecs/relu_0-fp16.onnx"
        (plan_dir / codec).parent.mkdir()
        onnx.save(OTHER_MODEL, plan_dir / codec)
        edit_plan(
            plan_dir, lambda d: (split_option(d)["head"].append(codec), split_option(d)["head_sha256"].append("0" * 64))
        )
        target = codec
    else:
        target = {
            "fallback": "device/fallback.onnx",
            "first segment": local["model"][0],
            "last segment": local["model"][-1],
        }[which]
        onnx.save(OTHER_MODEL, plan_dir / target)
    with pytest.raises(IntegrityError, match=f"{target}.*sha256"):
        load_plan(plan_dir)


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_a_head_outside_the_plan_directory_is_refused(plan_dir: Path, tmp_path: Path, where: str) -> None:
    head = plan_dir / first_head_file(plan_dir)
    outside = tmp_path / "elsewhere" / "head.onnx"
    outside.parent.mkdir()
    shutil.copy(head, outside)  # the same bytes: the sha256 matches, the place does not
    if where == "symlink":
        head.unlink()
        head.symlink_to(outside)
    else:
        path = str(outside) if where == "absolute" else "../elsewhere/head.onnx"
        edit_plan(plan_dir, lambda data: split_option(data)["head"].__setitem__(0, path))
    with pytest.raises(PlanError, match="outside the plan directory"):
        load_plan(plan_dir)


def _with_external_data(plan_dir: Path, location: str, *, link_to: Path | None = None) -> Path:
    """Rewrite the relu_0 head with its weights in external data at ``location``; the plan's sha256 follows."""
    head_rel = first_head_file(plan_dir)
    head_path = plan_dir / head_rel
    model = onnx.load(head_path)
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    onnx.save_model(model, head_path)  # writes weights.bin beside the head
    if location != "weights.bin":
        target = link_to or (head_path.parent / location)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(head_path.parent / "weights.bin", target)
        if link_to is not None:
            (head_path.parent / location).symlink_to(link_to)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        head_path.write_bytes(model.SerializeToString())  # onnx.save refuses such paths; an attacker would not
    set_sha256(plan_dir, head_rel, sha256_file(head_path))
    return head_path


def test_external_data_beside_the_head_loads(plan_dir: Path) -> None:
    _with_external_data(plan_dir, "weights.bin")
    load_plan(plan_dir)
    with Runtime(plan_dir, background_probes=False):
        pass


@pytest.mark.parametrize("location", ["../../secret.bin", "sub/../../secret.bin", "absolute", "link"])
def test_external_data_outside_the_head_folder_is_a_plan_error(plan_dir: Path, tmp_path: Path, location: str) -> None:
    if location == "link":
        _with_external_data(plan_dir, "link.bin", link_to=tmp_path / "secret.bin")
    elif location == "absolute":
        _with_external_data(plan_dir, "weights.bin")
        head = plan_dir / first_head_file(plan_dir)
        model = onnx.load(head, load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = str(head.parent / "weights.bin")  # absolute, even though it is inside
        head.write_bytes(model.SerializeToString())
        set_sha256(plan_dir, first_head_file(plan_dir), sha256_file(head))
    else:
        _with_external_data(plan_dir, location)
    with pytest.raises(PlanError, match="external data"):
        load_plan(plan_dir)
    with pytest.raises(PlanError, match="external data"):
        Runtime(plan_dir, background_probes=False)


def _with_subgraph_tensors(model: onnx.ModelProto) -> onnx.ModelProto:
    """if_model with an initializer and a Constant inside its then-branch: tensors in a subgraph."""
    then_branch = next(a.g for n in model.graph.node for a in n.attribute if a.name == "then_branch")
    then_branch.initializer.append(onnx.numpy_helper.from_array(np.ones(4, np.float32), "inner_w"))
    then_branch.node.append(
        onnx.helper.make_node(
            "Constant", [], ["inner_c"], value=onnx.numpy_helper.from_array(np.ones(2, np.float32), "c")
        )
    )
    return model


@pytest.mark.parametrize("model", [_with_subgraph_tensors(if_model()), residual_cnn()], ids=["if", "residual"])
def test_the_wire_scan_finds_every_external_data_location_onnx_does(tmp_path: Path, model: onnx.ModelProto) -> None:
    tensors = list(_all_tensors(model))
    for index, tensor in enumerate(tensors):
        set_external_data(tensor, location=f"part{index}.bin")
        tensor.data_location = onnx.TensorProto.EXTERNAL
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    assert external_data_locations(path) == {f"part{index}.bin" for index in range(len(tensors))}


def test_the_wire_scan_refuses_a_file_that_is_not_protobuf(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\xff" * 32)
    with pytest.raises(ValueError):
        external_data_locations(path)
