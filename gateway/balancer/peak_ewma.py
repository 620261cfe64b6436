"""peak_ewma (after Linkerd): power of two choices on latency x (in_flight + 1) / weight.

The latency estimate is the peak-sensitive, time-decayed average of `EndpointSignals`; the
factor `in_flight + 1` makes the cost an estimate of how long the new request would wait
behind ours. Unmeasured endpoints use the fleet's median latency (cached by refresh()),
falling back to `default_latency_s` before anything has been measured.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from gateway.balancer.base import Candidate, effective_weight, pick_p2c
from gateway.balancer.fleet import FleetReferenced
from gateway.request_info import RequestInfo


class PeakEwma(FleetReferenced):
    name = "peak_ewma"

    def score(self, candidate: Candidate, now: float) -> float:
        signals = candidate.signals
        latency_s = signals.latency_s(now, self._fleet.latency_s)
        return latency_s * (signals.in_flight + 1) / effective_weight(candidate, now)

    def pick(
        self,
        candidates: Sequence[Candidate],
        now: float,
        rng: random.Random,
        request: RequestInfo | None = None,
    ) -> Candidate:
        return pick_p2c(candidates, lambda c: self.score(c, now), rng)
