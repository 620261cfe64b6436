"""The interface every policy implements, and the selection helpers they share.

A policy reads signals and never writes them; given the same signals, clock and RNG state it
picks the same candidate. `refresh()` runs off the request path (every ~250 ms and on
membership change) and caches whatever needs a pass over the whole fleet, so that a
power-of-two-choices pick costs O(1) however many backends there are.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from gateway.config.model import BalancerConfig
from gateway.load import EndpointSignals
from gateway.request_info import RequestInfo


class Candidate(Protocol):
    """What a policy needs of an endpoint; the gateway's Endpoint satisfies it."""

    name: str
    weight: float  # relative capacity, > 0: load is divided by it
    signals: EndpointSignals


@dataclass(eq=False, slots=True)
class SimpleCandidate:
    """A bare Candidate, for tools and tests that balance without the gateway's Endpoint."""

    name: str
    weight: float
    signals: EndpointSignals

    @classmethod
    def new(
        cls, name: str, now: float, weight: float = 1.0, config: BalancerConfig | None = None
    ) -> SimpleCandidate:
        """A candidate with fresh signals (the default `balancer:` section unless given)
        created at `now`."""
        return cls(name, weight, EndpointSignals(config or BalancerConfig(), now))


class Policy(Protocol):
    name: str

    def pick(
        self,
        candidates: Sequence[Candidate],
        now: float,
        rng: random.Random,
        request: RequestInfo | None = None,
    ) -> Candidate:
        """Choose one of `candidates` (non-empty, already filtered for health) for `request`
        (None where the gateway knows nothing of it: a tool, a test, a streamed body)."""
        ...

    def score(self, candidate: Candidate, now: float) -> float | None:
        """The policy's cost for `candidate` (lower is better); None if it has none."""
        ...

    def refresh(self, candidates: Sequence[Candidate], now: float) -> None:
        """Recompute what a pick needs from the whole fleet; off the request path."""
        ...


C = TypeVar("C", bound=Candidate)


def effective_weight(candidate: Candidate, now: float) -> float:
    """Weight scaled down while the endpoint is in slow start."""
    return candidate.weight * candidate.signals.slow_start_factor(now)


def sample_two(n: int, rng: random.Random) -> tuple[int, int]:
    """Two distinct indices in range(n), uniformly, with exactly two RNG draws (n >= 2)."""
    first = rng.randrange(n)
    second = rng.randrange(n - 1)
    if second >= first:
        second += 1
    return first, second


def pick_p2c(candidates: Sequence[C], cost: Callable[[C], float], rng: random.Random) -> C:
    """Power of two choices: the cheaper of two distinct random candidates; a tie is a coin."""
    if len(candidates) == 1:
        return candidates[0]
    i, j = sample_two(len(candidates), rng)
    a, b = candidates[i], candidates[j]
    cost_a, cost_b = cost(a), cost(b)
    if cost_a == cost_b:
        return a if rng.random() < 0.5 else b
    return a if cost_a < cost_b else b


def pick_best(candidates: Sequence[C], cost: Callable[[C], float], rng: random.Random) -> C:
    """The cheapest candidate; among equal costs each is equally likely (reservoir sampling,
    so one pass and RNG draws only on ties)."""
    best = candidates[0]
    best_cost = cost(best)
    ties = 1
    for candidate in candidates[1:]:
        c = cost(candidate)
        if c < best_cost:
            best, best_cost, ties = candidate, c, 1
        elif c == best_cost:
            ties += 1
            if rng.randrange(ties) == 0:
                best = candidate
    return best


class RebuiltOnChange:
    """Base of policies whose per-pick state (a schedule, cumulative weights) derives from the
    candidate set and its effective weights: rebuilt on refresh(), which follows slow start,
    and whenever pick() is handed a different set. Noticing that costs one C-level tuple
    comparison per pick; the alternative, trusting refresh() alone, would pick an ejected
    endpoint until the next refresh."""

    def __init__(self) -> None:
        self._members: tuple[Candidate, ...] = ()

    def score(self, candidate: Candidate, now: float) -> None:
        return None

    def refresh(self, candidates: Sequence[Candidate], now: float) -> None:
        self._rebuild(tuple(candidates), now)

    def _current(self, candidates: Sequence[Candidate], now: float) -> tuple[Candidate, ...]:
        """The candidates as a tuple, the state rebuilt first if they changed."""
        members = tuple(candidates)
        if members != self._members:
            self._rebuild(members, now)
        return members

    def _rebuild(self, members: tuple[Candidate, ...], now: float) -> None:
        """Recompute the state for `members` and store them in `_members`."""
        raise NotImplementedError
