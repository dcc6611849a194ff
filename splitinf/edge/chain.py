"""A device model as a chain of ONNX files run over one name -> tensor map.

A plan keeps each weight on the device once by cutting the model at its candidate cuts into
segments (:mod:`splitinf.contract.plan`): a split option's head is the segments up to its cut and
then its codec graph, the local model is every segment plus the last one to the outputs. Each file
takes its inputs by name from the request's inputs and the earlier files' outputs, so a tensor
made early and needed late (a residual, a second graph input) is simply still in the map.

:class:`SessionPool` opens each file once, however many options run it; :class:`Chain` runs an
option's files in order and checks at load time that every file's inputs will be there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from splitinf.errors import PlanError
from splitinf.ort import SessionSettings, open_session

__all__ = ["Chain", "SessionPool"]


class Chain:
    """Sessions run in order; each takes its inputs by name from the feeds and the earlier outputs."""

    def __init__(self, label: str, sessions: Sequence[Any], files: Sequence[str] = ()) -> None:
        self.label = label
        self.sessions = tuple(sessions)
        self.files = tuple(files) or tuple(f"file {i + 1}" for i in range(len(self.sessions)))
        self._inputs = [[i.name for i in s.get_inputs()] for s in self.sessions]
        self._outputs = [[o.name for o in s.get_outputs()] for s in self.sessions]

    @property
    def output_names(self) -> list[str]:
        """Every tensor the chain makes, in order (the last file's outputs last)."""
        return [name for names in self._outputs for name in names]

    def check(self, feeds: Iterable[str], wanted: Iterable[str]) -> None:
        """PlanError unless, given tensors named ``feeds``, every file's inputs and every ``wanted`` name are there."""
        available = set(feeds)
        for file, inputs, outputs in zip(self.files, self._inputs, self._outputs, strict=True):
            missing = [n for n in inputs if n not in available]
            if missing:
                raise PlanError(
                    f"option {self.label!r}: {file} takes {missing}, which neither the plan's inputs nor the "
                    "files before it make; re-run `splitinf plan`"
                )
            available.update(outputs)
        missing = [n for n in wanted if n not in available]
        if missing:
            raise PlanError(f"option {self.label!r}: its files never make {missing}; re-run `splitinf plan`")

    def run(self, feeds: Mapping[str, np.ndarray], run_options: Any = None) -> dict[str, np.ndarray]:
        """The feeds and every tensor the files make, by name (``run_options``: onnxruntime's RunOptions)."""
        values = dict(feeds)
        for session, inputs, outputs in zip(self.sessions, self._inputs, self._outputs, strict=True):
            produced = session.run(outputs, {n: values[n] for n in inputs}, run_options)
            values.update(zip(outputs, produced, strict=True))
        return values


class SessionPool:
    """One session per file, opened on first use: options that share segments share their weights."""

    def __init__(
        self, resolve: Callable[[str], Path], settings: SessionSettings, opener: Callable[..., Any] = open_session
    ) -> None:
        self._resolve = resolve
        self._settings = settings
        self._opener = opener
        self._sessions: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def session(self, relative: str) -> Any:
        if relative not in self._sessions:
            self._sessions[relative] = self._opener(self._resolve(relative), self._settings)
        return self._sessions[relative]

    def chain(self, label: str, files: Sequence[str]) -> Chain:
        return Chain(label, [self.session(f) for f in files], files)
