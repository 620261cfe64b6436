"""Arrival times for an open-loop generator: when each request is due, fixed before the run.

Fixing the schedule up front is what makes the load open: a slow answer never delays the
next arrival, so queueing in the system under test shows up as latency instead of hiding as
a lower send rate. Times are seconds from the start of the run.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def poisson_arrivals(rate_rps: float, duration_s: float, rng: random.Random) -> list[float]:
    """A Poisson process of ``rate_rps`` over ``[0, duration_s)``: exponential gaps."""
    if rate_rps <= 0 or duration_s <= 0:
        return []
    times: list[float] = []
    t = rng.expovariate(rate_rps)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate_rps)
    return times


def varying_arrivals(
    rate_at: Callable[[float], float], peak_rps: float, duration_s: float, rng: random.Random
) -> list[float]:
    """A Poisson process whose rate changes over time, by thinning one at ``peak_rps``.

    ``rate_at(t_s)`` must never exceed ``peak_rps``; each candidate arrival is kept with
    probability ``rate_at(t) / peak_rps`` (Lewis and Shedler's method).
    """
    kept: list[float] = []
    for t in poisson_arrivals(peak_rps, duration_s, rng):
        rate = rate_at(t)
        if rate > peak_rps * (1 + 1e-9):
            raise ValueError(f"rate {rate} at t={t:.3f}s exceeds the peak {peak_rps}")
        if rng.random() * peak_rps < rate:
            kept.append(t)
    return kept


def linear_ramp(start_rps: float, end_rps: float, duration_s: float) -> Callable[[float], float]:
    """The rate of a ramp from ``start_rps`` to ``end_rps`` over ``duration_s``."""

    def rate_at(t_s: float) -> float:
        frac = min(max(t_s / duration_s, 0.0), 1.0)
        return start_rps + (end_rps - start_rps) * frac

    return rate_at
