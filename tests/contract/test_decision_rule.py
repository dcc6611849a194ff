"""The one decision rule (splitinf.contract.plan.choose_option, Plan.planned) and the plan's budget in plan.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitinf.contract.plan import DEFAULT_BUDGET_S, Option, Plan, choose_option, load_plan
from splitinf.contract.tensors import TensorSpec
from splitinf.errors import PlanError
from splitinf.tools.testing.plans import split_option

X = TensorSpec("x", "float32", (1, 4))


FALLBACK = Option(id="fallback", kind="fallback", accuracy=0.80, model="device/fallback.onnx", seconds=0.002)
LOCAL = Option(id="local", kind="local", accuracy=0.95, model="device/local.onnx", seconds=0.5)
BIG = split_option("early", 1_000_000, 0.95)  # 8 Mbit: needs a fast link
SMALL = split_option("late", 1_000, 0.95)


def test_the_most_accurate_option_within_budget_ties_to_the_faster() -> None:
    # 100 Mbit/s: both splits fit, same accuracy -> the faster (fewer bytes); the fallback is less accurate
    option, seconds = choose_option([BIG, SMALL, FALLBACK], 100e6, 0.01, 0.1)  # type: ignore[misc]
    assert option is SMALL
    assert seconds == pytest.approx(0.001 + 0.001 + 8_000 / 100e6 + 0.01)
    more_accurate = split_option("early", 1_000_000, 0.99)
    assert choose_option([more_accurate, SMALL], 100e6, 0.01, 0.1)[0] is more_accurate  # type: ignore[index]
    # 1 Mbit/s: the 8 Mbit option no longer fits, the small one does
    assert choose_option([more_accurate, SMALL], 1e6, 0.01, 0.1)[0] is SMALL  # type: ignore[index]
    assert choose_option([more_accurate, SMALL], 1e3, 0.01, 0.1) is None
    # an option without a measured accuracy ranks below any measured one
    unknown = split_option("unknown", 10, None)
    assert choose_option([unknown, SMALL], 100e6, 0.01, 0.1)[0] is SMALL  # type: ignore[index]


def test_planned_is_the_rule_over_every_option_and_the_fallback_when_nothing_fits() -> None:
    plan = Plan("m", "0" * 64, (X,), (X,), (BIG, SMALL, LOCAL, FALLBACK), budget_s=0.1)
    assert plan.planned(100e6, 0.01)[0] is SMALL  # type: ignore[index]
    # a budget that lets the slow local model in: same accuracy, so still the faster split
    assert plan.planned(100e6, 0.01, budget_s=1.0)[0] is SMALL  # type: ignore[index]
    # nothing fits 1 ms except the fallback
    assert plan.planned(1e3, 0.3)[0] is FALLBACK  # type: ignore[index]
    assert plan.planned(1e3, 0.3, budget_s=1.0)[0] is LOCAL  # type: ignore[index]
    no_fallback = Plan("m", "0" * 64, (X,), (X,), (BIG,), budget_s=0.1)
    assert no_fallback.planned(1e3, 0.3) is None


def test_the_budget_round_trips_through_plan_json_and_defaults_to_the_device_default() -> None:
    plan = Plan("m", "0" * 64, (X,), (X,), (SMALL, FALLBACK), budget_s=0.08)
    data = plan.to_json()
    assert data["budget_s"] == 0.08 and "table" not in data
    assert Plan.from_json(data).budget_s == 0.08
    del data["budget_s"]
    assert Plan.from_json(data).budget_s == DEFAULT_BUDGET_S
    with pytest.raises(PlanError, match="budget_s"):
        Plan("m", "0" * 64, (X,), (X,), (SMALL,), budget_s=0.0)


def test_an_old_plan_with_a_decision_table_still_loads(tmp_path: Path) -> None:
    data = Plan("m", "0" * 64, (X,), (X,), (SMALL, FALLBACK)).to_json()
    del data["budget_s"]
    data["table"] = {"bandwidths_bps": [1e6], "rtts_s": [0.01], "choices": [["split:late:fp32"]]}
    (tmp_path / "plan.json").write_text(json.dumps(data))
    plan = load_plan(tmp_path, check_files=())
    assert [o.id for o in plan.options] == [SMALL.id, FALLBACK.id]
    assert plan.budget_s == DEFAULT_BUDGET_S
    assert "table" not in plan.to_json()
