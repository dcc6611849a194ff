"""Is the model answering on the server this plan's tail? Checked on any V2 server.

Stock V2 servers (Triton, KServe, MLServer) send no splitinf parameters, so the tail's identity
rests on what every V2 server offers, with splitinf's own parameter as a stronger check where present:

- **The name.** The planner names each tail's model after its content
  (``<model>.<cut>.<codec>.<sha256 prefix>``), so a server answers to that name only when it was
  given that file; a redeployed plan with another tail has another name, and the old device gets
  NOT_FOUND instead of another tail's numbers.
- **The metadata** (``tail_identity = "metadata"``, the default). When the device first uses a
  tail after connecting, and again after every reconnect (the server may have been redeployed
  meanwhile), it reads the tail's ``ModelMetadata`` and compares the name, the inputs (the
  option's wire tensors) and the outputs (the plan's): names, datatypes, shapes (-1 and symbolic
  dims match any size). A server that declares no tensors at all is taken at its name (logged once).
- **The sha256.** Where an answer carries ``splitinf_model_sha256`` (``splitinf serve`` sends it)
  it must equal the plan's ``tail_sha256``. With ``tail_identity = "sha256"`` the parameter is
  required, so only ``splitinf serve`` qualifies: the strictest setting.

Every answer's tensors are checked too (names, dtypes, shapes). Anything that differs raises
``RemoteMismatchError`` saying what differs; the runtime then quarantines the option.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from splitinf.contract.plan import Option, Plan, content_addressed_name
from splitinf.contract.tensors import TensorSpec, check_tensors, shown_shape
from splitinf.errors import InputError, RemoteMismatchError
from splitinf.protocol.tensors import datatype_of

__all__ = [
    "TAIL_IDENTITY_MODES",
    "TailIdentity",
    "TailIdentityMode",
    "check_outputs",
    "dims_match",
    "metadata_differences",
]

log = logging.getLogger(__name__)

TailIdentityMode = Literal["metadata", "sha256"]
TAIL_IDENTITY_MODES: tuple[TailIdentityMode, ...] = ("metadata", "sha256")


def dims_match(spec: Sequence[int | str | None], shape: Sequence[int]) -> bool:
    """Same rank, and every dim that both sides fix (an int >= 0) is equal."""
    return len(spec) == len(shape) and all(
        not isinstance(want, int) or want < 0 or got < 0 or want == got for want, got in zip(spec, shape, strict=True)
    )


def _tensor_differences(what: str, wanted: Sequence[TensorSpec], declared: Sequence[Any]) -> list[str]:
    by_name = {t.name: t for t in declared}
    names = sorted(by_name)
    if names != sorted(s.name for s in wanted):
        return [f"{what} are {names}, the plan's are {sorted(s.name for s in wanted)}"]
    differences = []
    for spec in wanted:
        tensor = by_name[spec.name]
        datatype = datatype_of(spec.dtype)
        if tensor.datatype != datatype or not dims_match(spec.shape, list(tensor.shape)):
            differences.append(
                f"{what[:-1]} {spec.name!r} is {tensor.datatype}{list(tensor.shape)}, "
                f"the plan's is {datatype}{shown_shape(spec.shape)}"
            )
    return differences


def metadata_differences(option: Option, plan: Plan, metadata: Any) -> list[str]:
    """What differs between a ``ModelMetadataResponse`` and the plan's tail; empty when nothing does."""
    differences = []
    if metadata.name and metadata.name != option.tail_model:
        differences.append(f"the model is named {metadata.name!r}, the plan's tail {option.tail_model!r}")
    if metadata.inputs or metadata.outputs:
        differences += _tensor_differences("inputs", option.wire, metadata.inputs)
        differences += _tensor_differences("outputs", plan.outputs, metadata.outputs)
    return differences


def check_outputs(plan: Plan, outputs: Mapping[str, np.ndarray]) -> None:
    """RemoteMismatchError unless the answer holds exactly the plan's outputs, with their dtypes and shapes."""
    try:
        check_tensors(plan.outputs, outputs, what="output")
    except InputError as exc:
        raise RemoteMismatchError(f"the server's answer does not fit the plan: {exc}", responded=True) from exc


class TailIdentity:
    """The device's identity checks of the plan's tails on one server. Thread-safe.

    ``client`` needs ``model_metadata(name, timeout_s, version)``; when it also has
    ``watch_connectivity(callback)`` every loss of the connection makes the tails unverified again.
    """

    def __init__(self, plan: Plan, mode: TailIdentityMode, client: Any) -> None:
        if mode not in TAIL_IDENTITY_MODES:
            raise ValueError(f"tail_identity must be one of {TAIL_IDENTITY_MODES}, got {mode!r}")
        self.plan = plan
        self.mode = mode
        self._client = client
        self._lock = threading.Lock()
        self._epoch = 0  # bumped whenever the connection is lost: a reconnect may reach another deployment
        self._verified: dict[str, int] = {}  # option id -> the epoch its metadata was checked in
        self._undeclared_logged: set[str] = set()
        unnamed = [o.id for o in plan.split_options if o.tail_sha256 and not _carries_sha(o)]
        if unnamed and mode == "metadata":
            log.warning(
                "the tails of options %s are not named after their sha256 (a plan from an older splitinf); "
                "their identity rests on the servers' metadata: re-run `splitinf plan` for content-addressed names",
                unnamed,
            )
        watch = getattr(client, "watch_connectivity", None)
        if callable(watch):
            watch(self._on_connectivity)

    def _on_connectivity(self, ready: bool) -> None:
        if not ready:
            with self._lock:
                self._epoch += 1

    def invalidate(self) -> None:
        """Check every tail's metadata again before it is trusted (e.g. after the connection failed)."""
        self._on_connectivity(False)

    def is_verified(self, option: Option) -> bool:
        with self._lock:
            return self._verified.get(option.id) == self._epoch

    def verify(self, option: Option, timeout_s: float) -> None:
        """Read the tail's ModelMetadata unless done since the last (re)connect; RemoteMismatchError on a difference.

        Transport errors (the server is down, the model is missing) propagate as they are.
        """
        if self.mode != "metadata" or self.is_verified(option):
            return
        with self._lock:
            epoch = self._epoch
        assert option.tail_model is not None
        metadata = self._client.model_metadata(option.tail_model, timeout_s=timeout_s, version=option.tail_version)
        differences = metadata_differences(option, self.plan, metadata)
        if differences:
            raise RemoteMismatchError(
                f"the server's {option.tail_model!r} is not the plan's tail for {option.id}: "
                + "; ".join(differences)
                + ". Deploy the tails of this plan (server/ in the plan directory) to the server",
                responded=True,
            )
        if not metadata.inputs and not metadata.outputs and option.id not in self._undeclared_logged:
            self._undeclared_logged.add(option.id)
            log.warning("the server declares no tensors for %r; trusting its name", option.tail_model)
        with self._lock:
            self._verified[option.id] = epoch

    def check_answer(self, option: Option, outputs: Mapping[str, np.ndarray], model_sha256: str | None) -> None:
        """RemoteMismatchError unless an answer is the plan's tail answering with the plan's outputs."""
        if option.tail_sha256 and model_sha256 is not None and model_sha256 != option.tail_sha256:
            raise RemoteMismatchError(
                f"the server's {option.tail_model!r} has sha256 {model_sha256}, the plan expects "
                f"{option.tail_sha256}; deploy the tails of this plan (server/ in the plan directory) to the server",
                responded=True,
            )
        if self.mode == "sha256" and option.tail_sha256 and model_sha256 is None:
            raise RemoteMismatchError(
                f"the server's answer from {option.tail_model!r} carries no splitinf_model_sha256 (only "
                '`splitinf serve` sends it); with another V2 server set tail_identity = "metadata" '
                "(device config) or --tail-identity metadata",
                responded=True,
            )
        check_outputs(self.plan, outputs)


def _carries_sha(option: Option) -> bool:
    sha = option.tail_sha256
    return bool(sha and option.tail_model and option.tail_model.endswith(content_addressed_name("", sha)))
