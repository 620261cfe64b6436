"""The hedge decisions: the learned delay, the budget, and when the core refuses a hedge."""

from __future__ import annotations

import random

import pytest

from gateway.config import parse_config
from gateway.config.model import HedgingConfig
from gateway.endpoint import Endpoint
from gateway.exchange import Exchange, open_exchange
from gateway.failures import Failure
from gateway.health.outcome import Outcome
from gateway.hedging import Hedging, LatencyQuantile
from gateway.request_info import NO_INFO
from gateway.runtime import Runtime

BACKENDS = "backends: [{url: 'http://10.0.0.1:8000'}, {url: 'http://10.0.0.2:8000'}]\n"


def runtime(extra: str = "") -> Runtime:
    return Runtime(parse_config(BACKENDS + extra), clock=lambda: 0.0, rng=random.Random(1))


def tried_once(rt: Runtime, method: str = "POST", path: str = "/v1/completions") -> Exchange:
    exchange = open_exchange(rt, method, path, {}, NO_INFO, 0.0)
    endpoint = exchange.admit(0.0)
    assert isinstance(endpoint, Endpoint)
    exchange.start_try(endpoint).begin()
    return exchange


def test_the_quantile_follows_the_recent_window_only() -> None:
    window = LatencyQuantile(0.95, window=100)
    for i in range(100):
        window.add(i / 1000)
    assert window.value() == pytest.approx(0.095)
    for _ in range(100):  # the old samples leave as new ones arrive
        window.add(1.0)
    assert window.value() == 1.0 and len(window) == 100


def test_the_shipped_delay_is_the_p99_so_one_healthy_try_in_a_hundred_may_hedge() -> None:
    rt = runtime()
    for i in range(200):
        rt.hedging.observe("default", False, (i + 1) / 1000)  # 1 .. 200 ms
    delay_s = rt.hedging.delay_s("default", False)
    assert delay_s == pytest.approx(0.199)
    slower = sum(1 for i in range(200) if (i + 1) / 1000 > delay_s)
    assert slower == 1


def test_no_delay_is_learned_before_enough_samples() -> None:
    hedging = Hedging(HedgingConfig(), min_samples=20)
    for _ in range(19):
        hedging.observe("default", False, 0.05)
    assert hedging.delay_s("default", False) is None
    hedging.observe("default", False, 0.05)
    assert hedging.delay_s("default", False) == pytest.approx(0.05)
    assert hedging.delay_s("default", True) is None  # a stream's first byte is its own window


def test_the_learned_delay_is_held_between_its_floor_and_its_cap() -> None:
    hedging = Hedging(HedgingConfig(min_delay=0.01, max_delay=2.0), min_samples=1)
    hedging.observe("fast", False, 0.0001)
    hedging.observe("slow", False, 30.0)
    assert hedging.delay_s("fast", False) == 0.01
    assert hedging.delay_s("slow", False) == 2.0


def test_a_fixed_delay_needs_no_samples_and_disabled_means_never() -> None:
    assert Hedging(HedgingConfig(delay=0.2)).delay_s("g", False) == 0.2
    assert Hedging(HedgingConfig(enabled=False, delay=0.2)).delay_s("g", False) is None


def test_the_budget_allows_its_percentage_of_requests_plus_the_floor() -> None:
    hedging = Hedging(HedgingConfig(budget_percent=5.0), min_hedges_per_s=0.0)
    for _ in range(1000):
        hedging.record_request(0.0)
    sent = 0
    while hedging.has_budget(0.0):
        hedging.spend(0.0)
        sent += 1
    assert sent == 50  # 5% of 1000
    assert Hedging(HedgingConfig(), min_hedges_per_s=1.0).has_budget(0.0)  # 10 s window floor


def test_a_hedge_goes_to_the_other_backend_and_counts_as_a_try() -> None:
    rt = runtime("hedging: {delay: 50ms}\n")
    exchange = tried_once(rt)
    assert exchange.hedge_delay_s(False, True) == 0.05
    hedge = exchange.hedge(0.0)
    assert hedge is not None and hedge.name != exchange.tried[0]
    exchange.start_try(hedge)
    assert exchange.hedge_delay_s(False, True) is None  # retries.attempts (2) bound both


def test_a_group_of_one_backend_is_never_hedged() -> None:
    """A hedge never goes to the backend it hedges: with no other, the race is skipped."""
    one = "backends:\n  - {url: 'http://127.0.0.1:9001', name: only}\nhedging: {delay: 50ms}\n"
    rt = Runtime(parse_config(one), clock=lambda: 0.0, rng=random.Random(1))
    assert tried_once(rt).hedge_delay_s(False, True) is None


def test_only_requests_safe_to_send_twice_are_hedged() -> None:
    rt = runtime("hedging: {delay: 50ms}\n")
    assert tried_once(rt, "POST", "/orders").hedge_delay_s(False, True) is None
    assert tried_once(rt, "GET", "/v1/models").hedge_delay_s(False, True) == 0.05
    assert tried_once(rt).hedge_delay_s(False, replayable=False) is None


def test_no_hedge_into_a_saturated_group() -> None:
    rt = runtime("hedging: {delay: 50ms}\nlimits: {max_requests_per_backend: 1}\n")
    exchange = tried_once(rt)
    other = open_exchange(rt, "POST", "/v1/completions", {}, NO_INFO, 0.0)
    endpoint = other.admit(0.0)
    assert isinstance(endpoint, Endpoint)
    other.start_try(endpoint).begin()  # both backends now at their limit
    assert exchange.hedge(0.0) is None
    queued = open_exchange(rt, "POST", "/v1/completions", {}, NO_INFO, 0.0)
    assert queued.admit(0.0) is None  # waiting in the pending queue
    assert exchange.hedge(0.0) is None


def test_no_hedge_to_a_backend_already_tried_and_its_slot_is_handed_back() -> None:
    rt = Runtime(
        parse_config("backends: [{url: 'http://10.0.0.1:8000'}]\nhedging: {delay: 50ms}\n"),
        clock=lambda: 0.0,
    )
    exchange = tried_once(rt)
    (only,) = rt.fleet.endpoints.values()

    def tries_recorded() -> float | None:
        labels = {"backend": only.name}
        return rt.metrics.registry.get_sample_value("inference_latency_seconds_count", labels)

    before = tries_recorded()
    assert exchange.hedge(0.0) is None
    assert only.reserved == 0 and only.signals.in_flight == 1  # just the first try
    assert tries_recorded() == before  # no try was sent, so none is recorded: no sample


def test_a_spent_hedge_budget_refuses() -> None:
    rt = runtime("hedging: {delay: 50ms}\n")
    exchange = tried_once(rt)
    while rt.hedging.has_budget(0.0):
        rt.hedging.spend(0.0)
    assert exchange.hedge(0.0) is None


def test_the_hedge_loser_teaches_the_balancer_a_lower_bound_of_its_latency() -> None:
    rt = Runtime(parse_config(BACKENDS), clock=lambda: 3.0)
    exchange = open_exchange(rt, "POST", "/v1/completions", {}, NO_INFO, 0.0)
    endpoint = exchange.admit(0.0)
    assert isinstance(endpoint, Endpoint)
    attempt = exchange.start_try(endpoint)
    attempt.started_at = 1.0
    attempt.failed(Failure.HEDGE_LOST)
    assert attempt._latency(3.0, Outcome.CANCELLED) == 2.0  # waited 2 s with no answer
