"""random: each pick independent, with probability proportional to effective weight.

The cumulative weights are rebuilt on refresh() (every ~250 ms, which follows slow start) and
when the candidate set changes; a pick is one RNG draw and a binary search, O(log n).
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence

from gateway.balancer.base import Candidate, RebuiltOnChange, effective_weight
from gateway.request_info import RequestInfo


class RandomPick(RebuiltOnChange):
    name = "random"

    def __init__(self) -> None:
        super().__init__()
        self._cumulative: list[float] = []

    def pick(
        self,
        candidates: Sequence[Candidate],
        now: float,
        rng: random.Random,
        request: RequestInfo | None = None,
    ) -> Candidate:
        members = self._current(candidates, now)
        cumulative = self._cumulative
        point = rng.random() * cumulative[-1]
        return members[min(bisect.bisect_right(cumulative, point), len(members) - 1)]

    def _rebuild(self, members: tuple[Candidate, ...], now: float) -> None:
        self._members = members
        weights = (effective_weight(m, now) for m in members)
        self._cumulative = list(itertools.accumulate(weights))
