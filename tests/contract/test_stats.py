"""The one percentile helper (splitinf.contract.stats.quantile): scale, interpolation, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitinf.contract.stats import quantile


def test_quantiles_interpolate_between_ordered_values() -> None:
    assert quantile([3.0, 1.0, 2.0, 4.0], 0.5) == pytest.approx(2.5)
    assert quantile([10.0, 0.0], 0.9) == pytest.approx(9.0)
    assert quantile([5.0], 0.99) == 5.0
    assert quantile(iter([1.0, 2.0]), 0.0) == 1.0 and quantile((1.0, 2.0), 1.0) == 2.0


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0.0, 1.0))
def test_a_quantile_lies_within_the_values_and_agrees_with_numpy_percentile(values: list[float], q: float) -> None:
    result = quantile(values, q)
    assert min(values) <= result <= max(values)
    assert result == pytest.approx(float(np.percentile(values, q * 100)), rel=1e-9, abs=1e-6)


def test_a_percent_or_no_values_is_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        quantile([1.0, 2.0], 90)
    with pytest.raises(ValueError, match="no values"):
        quantile([], 0.5)
