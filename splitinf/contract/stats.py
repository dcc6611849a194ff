"""The one percentile helper: latency summaries in the CLI, the bench, the demo and the profiler use it."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["quantile"]


def quantile(values: Iterable[float], fraction: float) -> float:
    """The ``fraction`` quantile (0 to 1, so 0.9 is p90) of ``values``, linearly interpolated as numpy does.

    A fraction outside [0, 1] (a percent passed by mistake) and an empty sequence raise ValueError.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a quantile's fraction is between 0 and 1 (0.9 for p90), got {fraction!r}")
    array = np.fromiter(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("the quantile of no values is undefined")
    return float(np.quantile(array, fraction))
