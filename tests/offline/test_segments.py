"""The model as a chain of segments between cuts: every head a prefix of the chain, each weight once.

Oracles are onnxruntime runs of the full model and of ``split_model``'s single-file heads (the
format 1 heads), on models with residuals, parallel branches, two inputs and outputs, constants
computed in the graph and control flow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest

from splitinf.edge.chain import SessionPool
from splitinf.errors import PlanError
from splitinf.offline.codecs import calibrate, encode
from splitinf.offline.graph import GraphView, enumerate_cuts
from splitinf.offline.inputs import random_inputs
from splitinf.offline.partition import save_model, split_model
from splitinf.offline.segments import OUTPUTS_END, chain_segments, codec_model, segment_model, write_chain
from splitinf.ort import Chain, SessionSettings, open_session
from splitinf.tools.testing import graphs as models

MODELS = {
    "residual": models.residual_cnn(),
    "inception": models.inception_block(),
    "two_in_two_out": models.two_in_two_out(),
    "constant_weights": models.constant_weights_model(batch=2),
    "if": models.if_model(),
    "densenet": models.densenet_like(blocks=2, layers_per_block=4),
}


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = open_session(model.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted}), strict=True))


def chain_of(segments: Sequence[onnx.ModelProto]) -> Chain:
    return Chain("test", [open_session(s.SerializeToString()) for s in segments])


def feeds_for(model: onnx.ModelProto, seed: int = 3) -> dict[str, np.ndarray]:
    return random_inputs(GraphView(model).input_specs(), seed)


def spread(model: onnx.ModelProto, count: int = 4) -> list:
    cuts = enumerate_cuts(model)[:-1]  # not the outputs cut: a head that is the whole model is the local option
    step = max(len(cuts) // count, 1)
    return cuts[::step]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_head_is_a_prefix_of_the_chain_and_equals_the_single_file_head(name: str) -> None:
    model = MODELS[name]
    view = GraphView(model)
    cuts = spread(model)
    segments, reach = chain_segments(view, cuts, to_outputs=True)
    built = [segment_model(view, s) for s in segments]
    feeds = feeds_for(model)
    full = run(model, feeds)
    for cut in cuts:
        values = chain_of(built[: reach[cut.id]]).run(feeds)
        single = run(split_model(model, cut).head, feeds)
        for tensor in cut.names:
            np.testing.assert_allclose(values[tensor], single[tensor], rtol=1e-6, atol=1e-6, err_msg=tensor)
    values = chain_of(built).run(feeds)
    assert reach[OUTPUTS_END] == len(built)
    for output, expected in full.items():
        np.testing.assert_allclose(values[output], expected, rtol=1e-5, atol=1e-6, err_msg=output)


@pytest.mark.parametrize("name", ["residual", "inception", "densenet", "two_in_two_out"])
def test_the_segments_hold_each_weight_once(name: str) -> None:
    model = MODELS[name]
    view = GraphView(model)
    segments, _ = chain_segments(view, spread(model, 6), to_outputs=True)
    held = [t.name for s in segments for t in segment_model(view, s).graph.initializer]
    assert sorted(held) == sorted(t.name for t in model.graph.initializer)


def test_a_cut_whose_head_adds_nothing_adds_no_segment() -> None:
    model = models.residual_cnn()
    view = GraphView(model)
    cuts = enumerate_cuts(model)
    segments, reach = chain_segments(view, [cuts[0], cuts[3], cuts[3]], to_outputs=False)
    assert reach[cuts[0].id] == 0 and reach[cuts[3].id] == 1 and len(segments) == 1
    assert segments[0].inputs == ("x",) and segments[0].outputs == cuts[3].names


@pytest.mark.parametrize("codec", ["fp16", "int8"])
def test_a_codec_graph_after_the_segments_equals_the_encoded_head(codec: str) -> None:
    model = models.residual_cnn()
    view = GraphView(model)
    cut = enumerate_cuts(model)[5]
    partition = split_model(model, cut)
    samples = [feeds_for(model, seed) for seed in range(4)]
    quant = calibrate(partition, samples, codec) if codec == "int8" else None
    encoded = encode(partition, codec, quant)
    graph = codec_model(partition.head, encoded.head)
    assert graph is not None and not [
        t for t in graph.graph.initializer if t.name in {i.name for i in model.graph.initializer}
    ]
    segments, reach = chain_segments(view, [cut], to_outputs=False)
    chain = chain_of([*(segment_model(view, s) for s in segments[: reach[cut.id]]), graph])
    for feeds in samples:
        values, expected = chain.run(feeds), run(encoded.head, feeds)
        for wire in encoded.wire:
            np.testing.assert_array_equal(values[wire.name], expected[wire.name])
    assert codec_model(partition.head, encode(partition, "fp32").head) is None


def test_write_chain_writes_each_segment_once_and_the_pool_opens_each_once(tmp_path: Path) -> None:
    model = models.residual_cnn(blocks=3)
    view = GraphView(model)
    cuts = spread(model)
    files = write_chain(tmp_path, view, cuts, to_outputs=True)
    assert [p for p, _ in files.up_to(OUTPUTS_END)] == sorted(
        str(p.relative_to(tmp_path)) for p in (tmp_path / "device/segments").iterdir()
    )
    save_model(model, tmp_path / "full.onnx")
    pool = SessionPool(lambda relative: tmp_path / relative, SessionSettings())
    feeds = feeds_for(model)
    for cut in cuts:
        pool.chain(cut.id, [p for p, _ in files.up_to(cut.id)]).run(feeds)
    local = pool.chain("local", [p for p, _ in files.up_to(OUTPUTS_END)])
    assert len(pool) == len(files.segments)
    np.testing.assert_allclose(local.run(feeds)["y"], run(model, feeds)["y"], rtol=1e-5, atol=1e-6)


def test_a_chain_missing_a_tensor_is_refused_at_load() -> None:
    model = models.residual_cnn()
    view = GraphView(model)
    cut = enumerate_cuts(model)[4]
    segments, _ = chain_segments(view, [cut], to_outputs=True)
    built = [segment_model(view, s) for s in segments]
    with pytest.raises(PlanError, match=r"takes \[.*neither the plan's inputs nor the files before it"):
        chain_of(built[1:]).check(["x"], ["y"])
    with pytest.raises(PlanError, match=r"never make \['nope'\]"):
        chain_of(built).check(["x"], ["y", "nope"])
    chain_of(built).check(["x"], ["y", *cut.names])
