"""peak_ewma: P2C on latency x (in_flight + 1) / effective weight."""

import random

import pytest

from gateway.balancer.base import SimpleCandidate
from gateway.balancer.peak_ewma import PeakEwma

DEFAULT_S = 0.1


def node(name: str, latency_s: float | None, in_flight: int = 0, weight: float = 1.0):
    c = SimpleCandidate.new(name, now=0.0, weight=weight)
    if latency_s is not None:
        c.signals.request_started(0.0)
        c.signals.request_finished(latency_s, 0.0)
    for _ in range(in_flight):
        c.signals.request_started(0.0)
    return c


def test_cost_is_latency_times_pending_plus_one_over_weight() -> None:
    p = PeakEwma(DEFAULT_S)
    assert p.score(node("a", 0.2, in_flight=3), 0.0) == pytest.approx(0.8)
    assert p.score(node("b", 0.2, in_flight=3, weight=4.0), 0.0) == pytest.approx(0.2)


def test_unmeasured_endpoints_cost_the_default_then_the_fleet_median() -> None:
    fleet = [node("a", 0.3), node("b", 0.5), node("c", 0.9), node("new", None)]
    p = PeakEwma(DEFAULT_S)
    assert p.score(fleet[3], 0.0) == pytest.approx(DEFAULT_S)
    p.refresh(fleet, 0.0)
    assert p.score(fleet[3], 0.0) == pytest.approx(0.5)


def test_a_slow_response_turns_traffic_away_at_once() -> None:
    fleet = [node("a", 0.1), node("b", 0.1)]
    p = PeakEwma(DEFAULT_S)
    p.refresh(fleet, 0.0)
    fleet[1].signals.request_started(1.0)
    fleet[1].signals.request_finished(2.0, 1.0)
    assert {p.pick(fleet, 1.0, random.Random(s)).name for s in range(20)} == {"a"}


def test_pending_requests_outweigh_a_small_latency_edge() -> None:
    fleet = [node("faster_busy", 0.09, in_flight=4), node("slower_idle", 0.1)]
    p = PeakEwma(DEFAULT_S)
    p.refresh(fleet, 0.0)
    assert p.pick(fleet, 0.0, random.Random(0)).name == "slower_idle"


def test_single_candidate() -> None:
    only = node("only", 5.0, in_flight=7)
    assert PeakEwma(DEFAULT_S).pick([only], 0.0, random.Random(0)) is only
