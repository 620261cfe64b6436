"""The fleet reference: medians that make per-endpoint signals comparable, cached by refresh().

Medians rather than means, so that one endpoint stuck at a 30 s timeout does not make every
other endpoint look fast, nor one overloaded endpoint make the rest look idle.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.balancer.base import Candidate, effective_weight

# Floor of the reference latency: it divides the latency term, and a fleet answering from a
# cache can measure 0 s.
MIN_LATENCY_S = 1e-6


@dataclass(frozen=True, slots=True)
class FleetReference:
    latency_s: float  # median estimate among measured endpoints: the prior for the others
    queue_per_weight: float  # median queue depth per unit of effective weight

    @classmethod
    def initial(cls, default_latency_s: float) -> FleetReference:
        """The reference before refresh() has seen any candidate."""
        return cls(latency_s=default_latency_s, queue_per_weight=0.0)

    @classmethod
    def compute(
        cls, candidates: Sequence[Candidate], now: float, previous: FleetReference
    ) -> FleetReference:
        """Medians over `candidates` (the endpoints that may take traffic).

        An idle endpoint's estimate fades toward the prior, which is this very median; the
        previous reference's median stands in for it, one refresh (~250 ms) behind. With no
        endpoint measured yet the previous latency (at first, `default_latency_s`) is kept.
        """
        prior_s = previous.latency_s
        latencies = [c.signals.latency_s(now, prior_s) for c in candidates if c.signals.has_latency]
        loads = [c.signals.queue_depth(now) / effective_weight(c, now) for c in candidates]
        return cls(
            latency_s=max(MIN_LATENCY_S, statistics.median(latencies)) if latencies else prior_s,
            queue_per_weight=statistics.median(loads) if loads else 0.0,
        )


class FleetReferenced:
    """Base of policies that score against the fleet: holds the reference, refresh() renews it.

    Until the first refresh() the reference is the default prior and an idle fleet, which is
    what a gateway that has sent nothing yet knows.
    """

    def __init__(self, default_latency_s: float) -> None:
        self._fleet = FleetReference.initial(default_latency_s)

    @property
    def fleet(self) -> FleetReference:
        return self._fleet

    def refresh(self, candidates: Sequence[Candidate], now: float) -> None:
        self._fleet = FleetReference.compute(candidates, now, self._fleet)
