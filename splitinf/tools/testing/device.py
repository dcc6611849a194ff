"""Device settings for tests of whole systems: policy periods short enough to see a fall-back and a return."""

from __future__ import annotations

from splitinf.edge.policy import PolicyConfig

__all__ = ["FAST_POLICY"]

# Trips at the first failure, reopens after 0.1-0.4 s, returns after 0.2 s of healthy probes.
FAST_POLICY = PolicyConfig(
    budget_s=1.0,
    window_s=5,
    min_calls=3,
    trip_after_failures=1,
    open_s=0.1,
    open_max_s=0.4,
    half_open_probes=2,
    probe_interval_s=0.05,
    stabilisation_s=0.2,
    min_dwell_s=0.1,
    flap_window_s=60,
    flap_limit=20,
    quarantine_s=60,
)
