"""Synthetic runs written straight into a trace store, for tests whose expected numbers must be exact."""

from __future__ import annotations

import numpy as np

from ssmkit.profile import TraceStore


def write_run(store: TraceStore, durations: dict[tuple[int, str], np.ndarray], *, phase: str = "decode",
              name: str = "synthetic", gap_ns: int = 0) -> int:
    """One run whose step s calls each (layer_idx, layer_type) of `durations` in order, lasting durations[key][s]
    ns, back to back with `gap_ns` between calls; wall_ns = the end of the last call. Returns the run_id."""
    run_id = store.begin_run(name, clock="cpu", device="cpu", model={}, environment={})
    steps = len(next(iter(durations.values())))
    rows, t, call = [], 0, 0
    for s in range(steps):
        for (layer_idx, layer_type), d in durations.items():
            rows.append((run_id, call, 0, phase, s, layer_idx, layer_type, 1, 1, t, int(d[s])))
            t += int(d[s]) + gap_ns
            call += 1
    store.write_batch(rows)
    store.end_run(run_id, status="ok", wall_ns=t)
    return run_id


def lognormal(rng: np.random.Generator, median_ns: float, sigma: float, n: int) -> np.ndarray:
    """n durations around median_ns with multiplicative noise exp(N(0, sigma))."""
    return np.round(median_ns * np.exp(sigma * rng.standard_normal(n)))
