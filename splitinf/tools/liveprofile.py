"""A server-role profile read from a running tail server instead of timed on another machine.

``live_server_profile(plan_dir, target)`` asks the server (ours or Triton) for each held split
option's tail its standard ModelStatistics: ``compute_infer`` (ns and count) over every request it
has run with its serving settings and load. A tail that has run fewer than ``min_requests`` first
gets that many requests of zeros at its wire shapes. The result is the profile ``splitinf plan
--server`` reads, for the plan's cuts and codecs only; ``base`` (a server-role profile of the same
model) supplies the cuts the server does not hold, the live figures replacing its tails.

A live figure is a mean, not a median: the statistics keep sums. Its ``repeats`` is the count.
"""

from __future__ import annotations

import copy
import datetime
import os
from collections.abc import Mapping
from typing import Any

from splitinf.contract.plan import Option, Plan, load_plan
from splitinf.edge.client import InferenceClient
from splitinf.errors import PlanError
from splitinf.offline.profiling import PROFILE_FORMAT, Timing, check_role, load_profile
from splitinf.protocol import grpc_service_pb2 as pb

__all__ = ["DEFAULT_MIN_REQUESTS", "live_server_profile"]

DEFAULT_MIN_REQUESTS = 20
_TIMEOUT_S = 30.0


def _mean_timing(duration: pb.StatisticDuration) -> Timing | None:
    if duration.count == 0:
        return None
    mean = duration.ns / duration.count / 1e9
    return Timing(median=mean, p90=mean, min=mean, repeats=int(duration.count))


def _statistics(client: InferenceClient, option: Option) -> pb.InferStatistics:
    name = str(option.tail_model)
    response = client.model_statistics(name, _TIMEOUT_S, option.tail_version)
    for stats in response.model_stats:
        if stats.name == name:
            return stats.inference_stats
    raise PlanError(f"the server {client.target} has no statistics for tail {name!r}; is it serving this plan?")


def _tail_figures(client: InferenceClient, option: Option, min_requests: int) -> dict[str, Any]:
    """The tail's mean compute (and request parsing) time on the server, after enough requests to mean something."""
    stats = _statistics(client, option)
    if stats.compute_infer.count < min_requests:
        zeros = {spec.name: spec.zeros() for spec in option.wire}
        for _ in range(min_requests - stats.compute_infer.count):
            client.infer(str(option.tail_model), zeros, timeout_s=_TIMEOUT_S, version=option.tail_version)
        stats = _statistics(client, option)
    tail = _mean_timing(stats.compute_infer)
    if tail is None:
        raise PlanError(f"the server {client.target} counted no runs of tail {option.tail_model!r}")
    figures: dict[str, Any] = {"tail": tail.to_json(), "wire_bytes": option.wire_bytes}
    parse = _mean_timing(stats.compute_input)
    if parse is not None:
        figures["deserialize"] = parse.to_json()
    return figures


def _empty_profile(plan: Plan, target: str, codecs: list[str]) -> dict[str, Any]:
    return {
        "format": PROFILE_FORMAT,
        "kind": "splitinf-profile",
        "role": "server",
        "model": {"name": plan.model_name, "sha256": plan.model_sha256},
        "machine": {"server": target},
        "settings": {"codecs": codecs},
        "inputs": dict(plan.inputs_at),
        "model_seconds": {},
        "segments": [],
        "check": {"parts": [], "max_abs_error": 0.0, "max_abs_held_out_error": 0.0},
        "cuts": [],
        "notes": [],
    }


def _base_profile(base: str | os.PathLike[str], plan: Plan) -> dict[str, Any]:
    profile = copy.deepcopy(load_profile(base))
    check_role(profile, role="server", source=str(base))
    if profile["model"].get("sha256") != plan.model_sha256:
        raise PlanError(
            f"the base profile {base} was measured on another model than the plan's; give one of this model"
        )
    profile["role"] = "server"
    return profile


def _merge(profile: dict[str, Any], cut_id: str, codec: str, figures: Mapping[str, Any]) -> None:
    for entry in profile["cuts"]:
        if entry.get("id") == cut_id:
            entry.setdefault("codecs", {}).setdefault(codec, {}).update(figures)
            return
    profile["cuts"].append({"id": cut_id, "codecs": {codec: dict(figures)}})


def live_server_profile(
    plan_dir: str | os.PathLike[str],
    target: str,
    *,
    client: InferenceClient | None = None,
    min_requests: int = DEFAULT_MIN_REQUESTS,
    base: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """A server-role profile of the plan's tails as the server at ``target`` runs them (see the module doc)."""
    plan = load_plan(plan_dir, check_files=())
    splits = [o for o in plan.options if o.kind == "split" and o.tail_model and o.cut_id and o.codec]
    if not splits:
        raise PlanError(f"the plan in {plan_dir} holds no split options: it has no tails to read from a server")
    codecs = sorted({str(o.codec) for o in splits})
    profile = _empty_profile(plan, target, codecs) if base is None else _base_profile(base, plan)
    settings = profile.setdefault("settings", {})
    settings["codecs"] = sorted(set(settings.get("codecs", ())) | set(codecs))
    settings["live"] = {"server": target, "statistic": "mean compute_infer", "min_requests": min_requests}
    own = client is None
    client = client or InferenceClient(target)
    try:
        for option in splits:
            _merge(profile, str(option.cut_id), str(option.codec), _tail_figures(client, option, min_requests))
    finally:
        if own:
            client.close()
    profile["measured"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return profile
