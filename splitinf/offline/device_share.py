"""How much of the model the device may run: ``--max-device-share``.

A device that cannot hold or run the whole model cannot hold or run a head that is nearly all of
it either. The cap is a share of the model's FLOPs (``0.5``, ``flops:0.5``) or of its parameters
(``params:0.5``); a split option whose head exceeds it is not weighed, and the local option (the
whole model, share 1) is held only when the cap is 1.

``splitinf plan --no-local`` says the full model does not fit; unless ``--max-device-share`` says
otherwise it then caps heads at :data:`NO_LOCAL_DEFAULT` (half the parameters), so it never picks a
head with 99% of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from splitinf.errors import UsageError
from splitinf.offline.graph import Cut

__all__ = ["NO_LOCAL_DEFAULT", "DeviceShare", "parse_device_share"]

Measure = Literal["flops", "params"]


@dataclass(frozen=True)
class DeviceShare:
    measure: Measure
    limit: float

    def of(self, cut: Cut) -> float:
        """The share of the model's FLOPs or parameters the head of ``cut`` holds (0 for an empty model)."""
        part, whole = (
            (cut.head_flops, cut.total_flops) if self.measure == "flops" else (cut.head_params, cut.total_params)
        )
        return part / whole if whole else 0.0

    def allows(self, cut: Cut) -> bool:
        return self.of(cut) <= self.limit + 1e-12

    @property
    def allows_whole_model(self) -> bool:
        return self.limit >= 1.0

    def __str__(self) -> str:
        return f"{self.measure}:{self.limit:g}"


NO_LOCAL_DEFAULT = DeviceShare("params", 0.5)


def parse_device_share(text: str) -> DeviceShare:
    """``"0.5"`` or ``"flops:0.5"`` (FLOPs), ``"params:0.5"`` (parameters); UsageError naming the form otherwise."""
    measure, _, value = text.strip().rpartition(":")
    measure = measure.strip().lower() or "flops"
    if measure not in ("flops", "params"):
        raise UsageError(f"--max-device-share {text!r}: the measure is flops or params (e.g. params:0.5)")
    try:
        limit = float(value)
    except ValueError as exc:
        raise UsageError(f"--max-device-share {text!r}: give a fraction like 0.5, flops:0.5 or params:0.5") from exc
    if not 0 < limit <= 1:
        raise UsageError(f"--max-device-share {text!r}: the fraction must be in (0, 1]")
    return DeviceShare("flops" if measure == "flops" else "params", limit)
