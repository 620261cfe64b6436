"""round_robin: weighted round robin by earliest virtual deadline (as Envoy's EDF scheduler).

Endpoint `i` of weight `w` falls due at virtual times `(k + phase_i) / w`, k = 0, 1, 2, ...; a
pick takes the earliest deadline from a heap and moves that endpoint on by `1/w`. So:
  * over any `sum(w)` consecutive picks with integer weights each endpoint is picked exactly
    `w` times (its `w` deadlines in each unit of virtual time), and equal weights rotate in order;
  * the phases `(i + 0.5) / n` stagger endpoints of equal weight, so that they do not all fall
    due at the same instant and leave the heavy ones waiting in a burst behind them;
  * a pick is O(log n). nginx's smooth weighted round robin is a little smoother (every prefix of
    the sequence within 1 pick of each endpoint's exact share; this one measured under 1.6 over
    20,000 random fleets of up to 12 endpoints) but costs O(n) per pick.

Deadlines are `base + (picks + phase) / w` from an integer count, not a running float sum, so
the schedule stays exact however long it runs. Weights (with slow start) are read when the
schedule is rebuilt: on refresh() (every ~250 ms) and when the candidate set changes. A rebuild
keeps each remaining endpoint's place, rescaling the time it still has to wait if its weight
changed; a new or returning endpoint is placed within its first interval `1/w` from now, so it
joins the rotation without a burst. Detecting a change costs one C-level comparison of the
candidate tuple per pick.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.balancer.base import Candidate, RebuiltOnChange, effective_weight
from gateway.request_info import RequestInfo


@dataclass(slots=True)
class _Slot:
    weight: float
    base: float  # virtual time this run of picks is counted from
    phase: float  # in [0, 1): where in its first interval the endpoint falls due
    picks: int = 0

    @property
    def deadline(self) -> float:
        return self.base + (self.picks + self.phase) / self.weight


class RoundRobin(RebuiltOnChange):
    name = "round_robin"

    def __init__(self) -> None:
        super().__init__()
        self._slots: list[_Slot] = []
        self._heap: list[tuple[float, int]] = []  # (deadline, index into _members)
        self._vtime = 0.0

    def pick(
        self,
        candidates: Sequence[Candidate],
        now: float,
        rng: random.Random,
        request: RequestInfo | None = None,
    ) -> Candidate:
        members = self._current(candidates, now)
        deadline, index = self._heap[0]
        slot = self._slots[index]
        slot.picks += 1
        heapq.heapreplace(self._heap, (slot.deadline, index))
        self._vtime = deadline
        return members[index]

    def _rebuild(self, members: tuple[Candidate, ...], now: float) -> None:
        previous = {m.name: s for m, s in zip(self._members, self._slots, strict=True)}
        vtime = self._vtime
        slots = []
        for i, member in enumerate(members):
            weight = effective_weight(member, now)
            slot = previous.get(member.name)
            if slot is None:
                slot = _Slot(weight, base=vtime, phase=(i + 0.5) / len(members))
            elif slot.weight != weight:
                wait = (slot.deadline - vtime) * slot.weight / weight
                slot = _Slot(weight, base=vtime + wait, phase=0.0)
            slots.append(slot)
        self._members = members
        self._slots = slots
        self._heap = [(slot.deadline, i) for i, slot in enumerate(slots)]
        heapq.heapify(self._heap)
