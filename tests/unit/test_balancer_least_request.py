"""least_request: P2C on (in_flight + 1) / effective weight."""

import random
from collections import Counter

import pytest

from gateway.balancer.base import SimpleCandidate
from gateway.balancer.least_request import LeastRequest
from gateway.config.model import BalancerConfig


def busy(name: str, in_flight: int, weight: float = 1.0, config=None) -> SimpleCandidate:
    c = SimpleCandidate.new(name, now=0.0, weight=weight, config=config)
    for _ in range(in_flight):
        c.signals.request_started(0.0)
    return c


def test_score_counts_the_request_being_placed_per_unit_of_weight() -> None:
    p = LeastRequest()
    assert p.score(busy("a", 3), 0.0) == 4.0
    assert p.score(busy("b", 3, weight=2.0), 0.0) == 2.0


def test_between_idle_endpoints_the_larger_one_wins() -> None:
    fleet = [busy("small", 0), busy("large", 0, weight=3.0)]
    assert {LeastRequest().pick(fleet, 0.0, random.Random(s)).name for s in range(20)} == {"large"}


def test_fewer_requests_win_and_latency_is_ignored() -> None:
    slow_idle = busy("slow_idle", 0)
    slow_idle.signals.request_started(0.0)
    slow_idle.signals.request_finished(30.0, 0.0)
    fleet = [busy("fast_busy", 5), slow_idle]
    assert LeastRequest().pick(fleet, 0.0, random.Random(0)).name == "slow_idle"


def test_the_most_loaded_of_three_is_never_picked() -> None:
    fleet = [busy("a", 0), busy("b", 1), busy("c", 2)]
    p = LeastRequest()
    picks = Counter(p.pick(fleet, 0.0, random.Random(s)).name for s in range(300))
    assert "c" not in picks and picks["a"] > picks["b"]


def test_closed_loop_load_follows_weight() -> None:
    fleet = [busy("w1", 0), busy("w3", 0, weight=3.0)]
    p, rng = LeastRequest(), random.Random(1)
    for _ in range(40):
        p.pick(fleet, 0.0, rng).signals.request_started(0.0)
    assert fleet[0].signals.in_flight == pytest.approx(10, abs=1)


def test_slow_start_counts_a_warming_endpoint_as_smaller() -> None:
    ramp = BalancerConfig(slow_start=10.0, slow_start_min_weight=0.25)
    warming = busy("warming", 0, config=ramp)
    assert LeastRequest().score(warming, 0.0) == 4.0
    assert LeastRequest().score(warming, 10.0) == 1.0


def test_single_candidate_and_no_cache() -> None:
    only = busy("only", 9)
    p = LeastRequest()
    p.refresh([only], 0.0)
    assert p.pick([only], 0.0, random.Random(0)) is only
