"""FleetReference: the medians that normalise scores, computed off the request path."""

import pytest

from gateway.balancer.base import SimpleCandidate
from gateway.balancer.fleet import MIN_LATENCY_S, FleetReference
from gateway.config.model import BalancerConfig

DEFAULT_S = 0.1


def measured(name: str, latency_s: float, now: float = 0.0) -> SimpleCandidate:
    c = SimpleCandidate.new(name, now=now)
    c.signals.request_started(now)
    c.signals.request_finished(latency_s, now)
    return c


def test_initial_reference_is_the_default_prior_and_an_idle_fleet() -> None:
    ref = FleetReference.initial(DEFAULT_S)
    assert (ref.latency_s, ref.queue_per_weight) == (DEFAULT_S, 0.0)


def test_latency_median_ignores_unmeasured_endpoints() -> None:
    fleet = [measured("a", 0.1), measured("b", 0.3), measured("c", 9.0)]
    fleet += [SimpleCandidate.new(f"new{i}", now=0.0) for i in range(5)]
    ref = FleetReference.compute(fleet, 0.0, FleetReference.initial(DEFAULT_S))
    assert ref.latency_s == pytest.approx(0.3)


def test_without_measurements_the_previous_latency_is_kept() -> None:
    fleet = [SimpleCandidate.new("a", now=0.0)]
    previous = FleetReference(latency_s=0.7, queue_per_weight=3.0)
    assert FleetReference.compute(fleet, 0.0, previous).latency_s == 0.7
    assert FleetReference.compute([], 0.0, previous).queue_per_weight == 0.0


def test_idle_estimates_fade_toward_the_previous_median() -> None:
    fleet = [measured("a", 1.0, now=0.0)]
    previous = FleetReference(latency_s=0.2, queue_per_weight=0.0)
    ref = FleetReference.compute(fleet, 10_000.0, previous)
    assert ref.latency_s == pytest.approx(0.2)


def test_a_zero_latency_fleet_is_floored() -> None:
    fleet = [measured("a", 0.0), measured("b", 0.0)]
    ref = FleetReference.compute(fleet, 0.0, FleetReference.initial(DEFAULT_S))
    assert ref.latency_s == MIN_LATENCY_S


def test_queue_median_is_per_unit_of_effective_weight() -> None:
    slow_start = BalancerConfig(slow_start=10.0, slow_start_min_weight=0.5)
    big = SimpleCandidate.new("big", now=0.0, weight=4.0)
    small = SimpleCandidate.new("small", now=0.0, weight=1.0)
    warming = SimpleCandidate.new("warming", now=0.0, weight=2.0, config=slow_start)
    for c, depth in ((big, 8), (small, 3), (warming, 1)):
        for _ in range(depth):
            c.signals.request_started(0.0)
    # per weight: big 8/4 = 2, small 3/1 = 3, warming 1/(2 * 0.5) = 1
    ref = FleetReference.compute([big, small, warming], 0.0, FleetReference.initial(DEFAULT_S))
    assert ref.queue_per_weight == pytest.approx(2.0)
