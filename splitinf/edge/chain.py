"""A device model as a chain of ONNX files run over one name -> tensor map.

A plan keeps each weight on the device once by cutting the model at its candidate cuts into
segments (:mod:`splitinf.contract.plan`): a split option's head is the segments up to its cut and
then its codec graph, the local model is every segment plus the last one to the outputs. Each file
takes its inputs by name from the request's inputs and the earlier files' outputs, so a tensor
made early and needed late (a residual, a second graph input) is simply still in the map.

:class:`SessionPool` opens each file once, however many options run it; :class:`splitinf.ort.Chain`
runs an option's files in order and checks at load time that every file's inputs will be there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from splitinf.ort import Chain, SessionSettings, open_session

__all__ = ["SessionPool"]


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
