"""Latency summaries in which a failed request counts as the slowest possible one.

A proxy that turns slow answers into fast errors must not look better for it, so the
"all requests" percentiles rank every failure above every success (latency ``inf``).
Percentiles use the nearest-rank method: the value reported is one that was observed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

FAILED = math.inf


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100] of values already sorted ascending."""
    if not sorted_values:
        return math.nan
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is outside (0, 100]")
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


@dataclass(frozen=True)
class Summary:
    """One run's outcome; latencies in seconds, ``inf`` where failures reach the percentile."""

    count: int
    errors: int
    duration_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    p999_s: float
    max_ok_s: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0

    @property
    def throughput_rps(self) -> float:
        """Successful answers per second of the measured window."""
        return (self.count - self.errors) / self.duration_s if self.duration_s > 0 else 0.0


def all_requests_latencies(latency_s: Sequence[float], ok: Sequence[bool]) -> list[float]:
    """Latencies sorted ascending, each failure replaced by ``inf`` so it ranks worst."""
    if len(latency_s) != len(ok):
        raise ValueError("latency_s and ok differ in length")
    return sorted(lat if good else FAILED for lat, good in zip(latency_s, ok, strict=True))


def summarize(latency_s: Sequence[float], ok: Sequence[bool], duration_s: float) -> Summary:
    ranked = all_requests_latencies(latency_s, ok)
    errors = sum(1 for good in ok if not good)
    successes = [lat for lat, good in zip(latency_s, ok, strict=True) if good]
    return Summary(
        count=len(ranked),
        errors=errors,
        duration_s=duration_s,
        p50_s=percentile(ranked, 50),
        p90_s=percentile(ranked, 90),
        p99_s=percentile(ranked, 99),
        p999_s=percentile(ranked, 99.9),
        max_ok_s=max(successes, default=math.nan),
    )
