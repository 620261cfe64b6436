"""One run's LLM figures: TTFT, TPOT, end-to-end, goodput under an SLO, errors, cache hits.

TTFT and end-to-end percentiles rank every failure as the slowest request (as
:mod:`loadtests.stats` does for latency), so a peer cannot look faster by failing. TPOT is
taken over the successful streams only: a failure has no rate. Goodput counts the requests
that succeeded *and* met the SLO, per second of the run.

A *cold open* is a session's first turn whose system prompt no session started before it in
the run carried (with no system prompt: every first turn): no pod can hold its prefix, so
whatever the router does it prefills the whole prompt. ``ttft_warm_p99_s`` leaves them out.
On chat traffic they are a few percent of the requests and among the slowest (a 1,500-token
prefill), so the plain TTFT p99 of a short run is often one of them: the floor of the fastest
pod's prefill, not the router's choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from loadtests.llm.client import Outcome
from loadtests.llm.workloads import Session
from loadtests.openloop import BEHIND_LAG_P50_S, BEHIND_LAG_P99_S
from loadtests.stats import all_requests_latencies, percentile

# Lag of a session's later turns includes its own think-time wake-up, so the same honesty
# thresholds as the proxy benchmark's open loop apply.


@dataclass(frozen=True)
class Slo:
    ttft_s: float = 0.5
    tpot_s: float = 0.05

    def met(self, outcome: Outcome) -> bool:
        tpot = outcome.tpot_s
        return outcome.ok and outcome.ttft_s <= self.ttft_s and not tpot > self.tpot_s


@dataclass(frozen=True)
class LlmSummary:
    requests: int
    errors: int
    duration_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    tpot_p50_s: float
    tpot_p99_s: float
    e2e_p99_s: float
    goodput_rps: float
    slo_share: float  # of all requests
    lag_p50_s: float
    lag_p99_s: float
    kept_share: float = math.nan  # follow-up turns served by the previous turn's pod
    ttft_warm_p99_s: float = math.nan  # TTFT p99 without the cold opens
    cold_opens: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def behind_schedule(self) -> bool:
        return self.lag_p50_s > BEHIND_LAG_P50_S or self.lag_p99_s > BEHIND_LAG_P99_S


def ranked_ttft_s(outcomes: Sequence[Outcome]) -> list[float]:
    """TTFTs ascending with failures as ``inf``: what the plot draws."""
    return all_requests_latencies([o.ttft_s for o in outcomes], [o.ok for o in outcomes])


def follow_ups_kept(outcomes: Sequence[Outcome]) -> float:
    """The share of follow-up turns served by the pod that served the session's previous
    turn (both answered and named by their pod): affinity, seen directly. NaN when none."""
    served = {(o.session, o.turn): o.served_by for o in outcomes if o.ok and o.served_by}
    pairs = [
        (pod, served[session, turn - 1])
        for (session, turn), pod in served.items()
        if turn > 0 and (session, turn - 1) in served
    ]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else math.nan


def cold_opens(sessions: Sequence[Session]) -> frozenset[int]:
    """The sessions (by index) whose first turn is a cold open (see the module docstring)."""
    seen: set[str] = set()
    cold = set()
    for number in sorted(range(len(sessions)), key=lambda i: sessions[i].start_s):
        system = sessions[number].system
        if not system or system not in seen:
            cold.add(number)
        seen.add(system)
    return frozenset(cold)


def summarize(
    outcomes: Sequence[Outcome],
    duration_s: float,
    slo: Slo,
    cold: frozenset[int] = frozenset(),
) -> LlmSummary:
    """The row's figures; ``cold`` names the sessions whose first turn is a cold open."""
    ok = [o.ok for o in outcomes]
    ttft = ranked_ttft_s(outcomes)
    warm = ranked_ttft_s([o for o in outcomes if o.turn > 0 or o.session not in cold])
    e2e = all_requests_latencies([o.e2e_s for o in outcomes], ok)
    tpot = sorted(t for t in (o.tpot_s for o in outcomes) if not math.isnan(t))
    lag = sorted(o.lag_s for o in outcomes)
    good = sum(1 for o in outcomes if slo.met(o))
    return LlmSummary(
        requests=len(outcomes),
        errors=ok.count(False),
        duration_s=duration_s,
        ttft_p50_s=percentile(ttft, 50),
        ttft_p90_s=percentile(ttft, 90),
        ttft_p99_s=percentile(ttft, 99),
        tpot_p50_s=percentile(tpot, 50),
        tpot_p99_s=percentile(tpot, 99),
        e2e_p99_s=percentile(e2e, 99),
        goodput_rps=good / duration_s if duration_s > 0 else 0.0,
        slo_share=good / len(outcomes) if outcomes else 0.0,
        lag_p50_s=percentile(lag, 50) if lag else 0.0,
        lag_p99_s=percentile(lag, 99) if lag else 0.0,
        kept_share=follow_ups_kept(outcomes),
        ttft_warm_p99_s=percentile(warm, 99) if warm else math.nan,
        cold_opens=sum(1 for o in outcomes if o.turn == 0 and o.session in cold),
    )
