"""The offered traffic: Poisson arrivals (rate possibly ramping), each with its service demand
and the gateway replica it reaches. One seed gives the same stream to every policy and to the
oracle, so they are compared on identical work."""

from __future__ import annotations

import random
from collections.abc import Iterator

from loadtests.simulate.pods import size_sampler
from loadtests.simulate.scenarios import Scenario


def arrivals(
    scenario: Scenario, requests: int, replicas: int, seed: int
) -> Iterator[tuple[float, float, int]]:
    """Yield `requests` tuples ``(arrival_s, size, replica_index)`` in time order.

    The rate is ``load x capacity`` (fault-free capacity), or for a ramp moves linearly from
    ``load`` to ``ramp_to`` over the run's expected length, drawn by thinning so the stream is
    an exact inhomogeneous Poisson process.
    """
    rng = random.Random(seed)
    draw_size = size_sampler(scenario.dist, scenario.sigma, random.Random(seed ^ 0x5EED))
    capacity = scenario.capacity_rps
    start_rate = scenario.load * capacity
    end_rate = (scenario.ramp_to if scenario.ramp_to is not None else scenario.load) * capacity
    peak = max(start_rate, end_rate)
    span_s = requests / ((start_rate + end_rate) / 2)
    slope = (end_rate - start_rate) / span_s
    expovariate = rng.expovariate
    uniform = rng.random
    pick_replica = rng.randrange
    now = 0.0
    for _ in range(requests):
        while True:
            now += expovariate(peak)
            rate = start_rate + slope * min(now, span_s)
            if rate >= peak or uniform() * peak < rate:
                break
        yield now, draw_size(), pick_replica(replicas) if replicas > 1 else 0
