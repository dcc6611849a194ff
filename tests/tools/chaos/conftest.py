"""Fixtures of the chaos scenarios: one plan per session, a killable tail server, a FaultProxy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

# pytest puts this folder on sys.path (rootdir conftest, no __init__.py), so the harness imports plainly
from chaos_harness import ChaosPlan, Device, Recorder, TailProcess, build_chaos_plan, device_config

from splitinf.edge.runtime import Runtime
from splitinf.tools.faults import FaultProxy


@pytest.fixture(scope="session")
def chaos_plan(tmp_path_factory: pytest.TempPathFactory) -> ChaosPlan:
    return build_chaos_plan(tmp_path_factory.mktemp("chaos-plan"))


@pytest.fixture
def tail(chaos_plan: ChaosPlan) -> Iterator[TailProcess]:
    process = TailProcess(chaos_plan.server_repo)
    yield process
    process.kill()


@pytest.fixture
def proxy(tail: TailProcess) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", tail.port)) as running:
        yield running


@pytest.fixture
def device(chaos_plan: ChaosPlan, proxy: FaultProxy) -> Iterator[Device]:
    """``device(budget_s=0.3, **config)`` -> a Recorder around a fresh Runtime talking through the proxy."""
    runtimes: list[Runtime] = []

    def make(budget_s: float = 0.3, **config: Any) -> Recorder:
        runtime = Runtime(chaos_plan.path, device_config(proxy.address, budget_s=budget_s, **config))
        runtimes.append(runtime)
        return Recorder(runtime, chaos_plan, budget_s)

    yield make
    for runtime in runtimes:
        runtime.close()
