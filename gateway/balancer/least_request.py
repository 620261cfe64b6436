"""least_request (after Envoy): power of two choices on in-flight requests per unit of weight.

Cost = (in_flight + 1) / effective_weight. The `+ 1` counts the request being placed, so that
between idle endpoints the one with more capacity wins instead of a tie. Only this gateway's
exact in-flight count is used: no latency, no reported depth, no fleet reference.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from gateway.balancer.base import Candidate, effective_weight, pick_p2c
from gateway.request_info import RequestInfo


class LeastRequest:
    name = "least_request"

    def score(self, candidate: Candidate, now: float) -> float:
        return (candidate.signals.in_flight + 1) / effective_weight(candidate, now)

    def refresh(self, candidates: Sequence[Candidate], now: float) -> None:
        """Nothing to cache: the cost reads only the candidate's own signals."""

    def pick(
        self,
        candidates: Sequence[Candidate],
        now: float,
        rng: random.Random,
        request: RequestInfo | None = None,
    ) -> Candidate:
        return pick_p2c(candidates, lambda c: self.score(c, now), rng)
