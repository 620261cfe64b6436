"""weighted_score: latency and queue, each relative to the fleet. The default policy,
prefix_aware, scores every request that carries no prompt by it.

    score = alpha * latency_term + beta * queue_term        (lowest wins, ties at random)

    latency_term = latency_i / median_latency
    queue_term   = (queue_depth_i / effective_weight_i) / max(1, median_queue_per_weight)

Why these terms:
  * Both terms are dimensionless and equal 1 for a typical endpoint of a busy fleet, so
    `alpha` and `beta` are exchange rates an operator can reason about: with the defaults
    (0.6, 0.4), being one median latency slower (+0.6) costs as much as carrying 1.5 median
    loads per unit of weight more (+0.4 * 1.5).
  * Latency is a property of a request, so it is not divided by weight; queue depth is load,
    and `weight` is capacity, so it is. `effective_weight = weight * slow_start_factor`: a
    warming endpoint looks more loaded than it is and is eased in.
  * The queue normaliser is floored at 1 request per unit of weight. When the fleet is nearly
    idle the median is 0 or a fraction, and dividing by it would turn the first request on an
    endpoint into an unbounded (or 1/median-fold) penalty that drowns the latency term: with
    a median of 0, one request would outweigh any latency difference. With the floor, below
    one request per unit of weight the queue term simply counts requests per unit of weight:
    each one adds `beta`, as a median latency more adds `alpha`. Above it, the term is relative
    to the fleet, like the latency term, so the balance between the two does not drift as the
    whole fleet gets busier.
  * An endpoint without samples (new, or recovered from ejection) has latency_term = 1 exactly
    (the prior is the fleet median): never zero, so a fresh pod does not draw a stampede.

Outlier guard (p2c): plain p2c sends a slow backend a request whenever both random draws are
slow, so with a share `s` of slow backends they keep about `s**2` of the traffic whatever the
scores say (1% for 10 slow pods in 100). When the better of the two draws is a latency outlier
(at least twice the fleet median) one more candidate is drawn and the best of three wins,
which cuts that floor to about `s**3` and still costs O(1). In the fleet simulator this took
weighted_score/p2c from 1.45x to 1.24x the oracle's p99 with one pod in ten 5x slower (M =
100, G = 8), and from 3.58x to 1.43x at G = 32.

Selection: `best` is the argmin over all candidates, O(n) per pick; `p2c` compares two distinct
random candidates, O(1) per pick, and spreads load better when many gateways share a fleet
(each sees slightly stale signals; `best` sends all of them to the same endpoint). Either way the
medians come from refresh(), so a pick reads only the live signals of the endpoints it scores.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from gateway.balancer.base import Candidate, effective_weight, pick_best, pick_p2c
from gateway.balancer.fleet import FleetReferenced
from gateway.request_info import RequestInfo

# A p2c winner at least this many times the fleet's median latency triggers a third draw.
OUTLIER_LATENCY = 2.0


class WeightedScore(FleetReferenced):
    name = "weighted_score"

    def __init__(self, alpha: float, beta: float, selection: str, default_latency_s: float):
        if selection not in ("best", "p2c"):
            raise ValueError(f"unknown selection {selection!r}")
        super().__init__(default_latency_s)
        self.alpha = alpha
        self.beta = beta
        self.selection = selection

    def score(self, candidate: Candidate, now: float) -> float:
        fleet = self._fleet
        signals = candidate.signals
        latency_term = signals.latency_s(now, fleet.latency_s) / fleet.latency_s
        load = signals.queue_depth(now) / effective_weight(candidate, now)
        queue_term = load / max(1.0, fleet.queue_per_weight)
        return self.alpha * latency_term + self.beta * queue_term

    def pick(
        self,
        candidates: Sequence[Candidate],
        now: float,
        rng: random.Random,
        request: RequestInfo | None = None,
    ) -> Candidate:
        def cost(candidate: Candidate) -> float:
            return self.score(candidate, now)

        if self.selection == "best":
            return pick_best(candidates, cost, rng)
        winner = pick_p2c(candidates, cost, rng)
        if len(candidates) > 2:
            prior = self._fleet.latency_s
            if winner.signals.latency_s(now, prior) >= OUTLIER_LATENCY * prior:
                other = candidates[rng.randrange(len(candidates))]
                if cost(other) < cost(winner):
                    return other
        return winner
