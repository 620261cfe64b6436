"""Summaries of runs: percentiles, ratios to the oracle, traffic shares, herding.

Herding is the time-averaged coefficient of variation (stdev / mean) of the requests each pod
holds per unit of weight, sampled at arrival instants (which, Poisson arrivals seeing time
averages, is the load a new request meets). It is 0 when every pod holds the same load and
grows when replicas pile onto the same pods: each replica sees only its own in-flight count,
so replicas that agree on "the best pod" send it a burst together. It is measured across the
whole fleet, not per replica, because piling up happens at the pod; comparing it across G for
one policy isolates herding from a policy's plain imbalance (G = 1 cannot herd).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from loadtests.simulate.engine import RunResult


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (`q` in [0, 1]) of an ascending list; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class Summary:
    """One run in report units: milliseconds, requests per second, shares in [0, 1]."""

    label: str
    scenario: str
    replicas: int
    backends: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    success: float
    throughput_rps: float
    herding_cov: float
    shares: tuple[float, ...]
    p99_vs_oracle: float = math.nan
    p50_vs_oracle: float = math.nan

    def with_oracle(self, oracle: Summary) -> Summary:
        """This summary with its p50 and p99 as multiples of the oracle's."""
        return Summary(
            **{
                **self.__dict__,
                "p99_vs_oracle": self.p99_ms / oracle.p99_ms,
                "p50_vs_oracle": self.p50_ms / oracle.p50_ms,
            }
        )


def summarize(result: RunResult) -> Summary:
    latencies = sorted(result.latencies_s)
    total_tries = sum(result.tries_per_pod) or 1
    return Summary(
        label=result.label,
        scenario=result.scenario,
        replicas=result.replicas,
        backends=result.backends,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        p999_ms=percentile(latencies, 0.999) * 1000,
        success=result.succeeded / result.requests,
        throughput_rps=result.throughput_rps,
        herding_cov=result.herding_cov,
        shares=tuple(n / total_tries for n in result.tries_per_pod),
    )


def share_text(shares: tuple[float, ...], bad: int) -> str:
    """All shares for a small fleet; for a large one, the misbehaving pods' total and the
    spread among the others."""
    if len(shares) <= 8:
        return " / ".join(f"{s:.0%}" for s in shares)
    rest = shares[bad:]
    head = f"bad {sum(shares[:bad]):.1%}, " if bad else ""
    return f"{head}others {min(rest):.2%}..{max(rest):.2%}"
