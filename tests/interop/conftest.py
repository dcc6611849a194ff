"""Fixtures of the interop tests: a plan's tails served by a third-party V2 server (MLServer, KServe, Triton).

``third_party_server(kind, plan_dir)`` (factory fixture) starts the server from its cached
environment and kills it at teardown. Without the environment the test is skipped with the
command that makes it, except in CI (``CI=true``), where a missing environment is a failure:
``.ci/run`` installs them before the tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from splitinf.tools.interop.servers import KINDS, ServerProcess, start_server
from splitinf.tools.interop.setup_envs import SERVERS

StartThirdParty = Callable[[str, Path], ServerProcess]


def require_env(kind: str) -> None:
    env = SERVERS[kind]
    if env.ready:
        return
    message = (
        f"the {kind} environment ({' '.join(env.requirements)}) is not installed at {env.path}; "
        f"make it with `python -m splitinf.tools.interop.setup_envs {kind}`"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI must run every interop test: .ci/run installs the environments)")
    pytest.skip(message)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    require_env(request.param)
    return str(request.param)


@pytest.fixture
def third_party_server(tmp_path: Path) -> Iterator[StartThirdParty]:
    started: list[ServerProcess] = []

    def start(kind: str, plan_dir: Path) -> ServerProcess:
        require_env(kind)
        server = start_server(kind, plan_dir, tmp_path / f"{kind}-work-{len(started)}")
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()
