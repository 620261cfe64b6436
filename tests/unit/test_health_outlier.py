"""OutlierDetector: consecutive rules under the cap, success-rate sweeps, decay, panic."""

from collections.abc import Sequence

import pytest

from gateway.config.model import CircuitBreakerConfig, OutlierDetectionConfig
from gateway.health import (
    CircuitState,
    EndpointHealth,
    Outcome,
    OutlierDetector,
    Reason,
)

BREAKER_OFF = CircuitBreakerConfig(enabled=False)


def fleet_of(n: int, settings: OutlierDetectionConfig, breaker: CircuitBreakerConfig = BREAKER_OFF):
    return [EndpointHealth(settings, breaker, name=f"e{i}") for i in range(n)]


def feed(
    detector: OutlierDetector,
    health: EndpointHealth,
    fleet: Sequence[EndpointHealth],
    outcome: Outcome,
    count: int,
    now: float = 0.0,
):
    """Record ``count`` outcomes; returns the transitions they caused."""
    results = [detector.on_outcome(health, fleet, outcome, now) for _ in range(count)]
    return [t for t in results if t is not None]


@pytest.mark.parametrize("outcome", [Outcome.HTTP_5XX, Outcome.GATEWAY_FAILURE])
def test_consecutive_5xx_ejects_after_exactly_the_count(outcome: Outcome) -> None:
    settings = OutlierDetectionConfig(consecutive_5xx=7, consecutive_gateway_failure=0)
    detector = OutlierDetector(settings)
    fleet = fleet_of(3, settings)
    assert feed(detector, fleet[0], fleet, outcome, 6) == []
    [transition] = feed(detector, fleet[0], fleet, outcome, 1)
    assert transition.reason == Reason.CONSECUTIVE_5XX
    assert transition.endpoint == "e0"
    assert fleet[0].state is CircuitState.OPEN
    assert fleet[0].opened_until == 30.0  # the default base_ejection_time


@pytest.mark.parametrize("outcome", [Outcome.GATEWAY_FAILURE, Outcome.LOCAL_ORIGIN_FAILURE])
def test_consecutive_gateway_failure_ejects_after_exactly_the_count(outcome: Outcome) -> None:
    settings = OutlierDetectionConfig(consecutive_5xx=0, consecutive_gateway_failure=3)
    detector = OutlierDetector(settings)
    fleet = fleet_of(3, settings)
    assert feed(detector, fleet[1], fleet, outcome, 2) == []
    [transition] = feed(detector, fleet[1], fleet, outcome, 1)
    assert transition.reason == Reason.CONSECUTIVE_GATEWAY_FAILURE


def test_plain_5xx_does_not_count_as_gateway_failure() -> None:
    settings = OutlierDetectionConfig(consecutive_5xx=0, consecutive_gateway_failure=2)
    detector = OutlierDetector(settings)
    fleet = fleet_of(3, settings)
    for _ in range(20):
        assert feed(detector, fleet[0], fleet, Outcome.GATEWAY_FAILURE, 1) == []
        assert feed(detector, fleet[0], fleet, Outcome.HTTP_5XX, 1) == []
    assert fleet[0].state is CircuitState.CLOSED


def test_success_resets_consecutive_rules() -> None:
    settings = OutlierDetectionConfig(consecutive_5xx=3, consecutive_gateway_failure=3)
    detector = OutlierDetector(settings)
    fleet = fleet_of(3, settings)
    for _ in range(20):
        assert feed(detector, fleet[0], fleet, Outcome.GATEWAY_FAILURE, 2) == []
        assert feed(detector, fleet[0], fleet, Outcome.SUCCESS, 1) == []
    assert fleet[0].state is CircuitState.CLOSED


def test_cancelled_counts_for_nothing() -> None:
    settings = OutlierDetectionConfig(consecutive_5xx=2)
    detector = OutlierDetector(settings)
    fleet = fleet_of(3, settings)
    feed(detector, fleet[0], fleet, Outcome.HTTP_5XX, 1)
    assert feed(detector, fleet[0], fleet, Outcome.CANCELLED, 50) == []
    assert fleet[0].consecutive_failures == 1
    assert len(feed(detector, fleet[0], fleet, Outcome.HTTP_5XX, 1)) == 1


def test_breaker_and_outlier_share_counters_and_open_once() -> None:
    settings = OutlierDetectionConfig(consecutive_5xx=5, consecutive_gateway_failure=5)
    detector = OutlierDetector(settings)
    fleet = fleet_of(3, settings, CircuitBreakerConfig(failure_threshold=5))
    transitions = feed(detector, fleet[0], fleet, Outcome.GATEWAY_FAILURE, 12)
    assert [t.reason for t in transitions] == [Reason.CIRCUIT_BREAKER]
    assert fleet[0].ejection_count == 1


def test_gateway_rule_wins_when_it_is_lower_than_the_breaker() -> None:
    settings = OutlierDetectionConfig(consecutive_5xx=5, consecutive_gateway_failure=2)
    detector = OutlierDetector(settings)
    fleet = fleet_of(3, settings, CircuitBreakerConfig(failure_threshold=5))
    [transition] = feed(detector, fleet[0], fleet, Outcome.LOCAL_ORIGIN_FAILURE, 2)
    assert transition.reason == Reason.CONSECUTIVE_GATEWAY_FAILURE
    assert fleet[0].ejection_count == 1


def test_max_ejection_percent_lets_one_go_but_not_a_second() -> None:
    settings = OutlierDetectionConfig(consecutive_5xx=5, max_ejection_percent=10)
    detector = OutlierDetector(settings)
    fleet = fleet_of(3, settings)
    assert len(feed(detector, fleet[0], fleet, Outcome.HTTP_5XX, 5)) == 1
    assert feed(detector, fleet[1], fleet, Outcome.HTTP_5XX, 50) == []
    assert fleet[1].state is CircuitState.CLOSED
    # Once the first is back, the second (still failing) is ejected on its next failure.
    assert fleet[0].try_acquire(30.0)
    detector.on_outcome(fleet[0], fleet, Outcome.SUCCESS, 30.0)
    [transition] = feed(detector, fleet[1], fleet, Outcome.HTTP_5XX, 1, now=30.0)
    assert transition.reason == Reason.CONSECUTIVE_5XX


@pytest.mark.parametrize(
    ("n", "percent", "allowed"),
    [(3, 10, 1), (3, 34, 1), (3, 67, 2), (10, 10, 1), (10, 20, 2), (10, 50, 5), (4, 100, 4)],
)
def test_cap_arithmetic(n: int, percent: float, allowed: int) -> None:
    settings = OutlierDetectionConfig(consecutive_5xx=1, max_ejection_percent=percent)
    detector = OutlierDetector(settings)
    fleet = fleet_of(n, settings)
    for health in fleet:
        feed(detector, health, fleet, Outcome.HTTP_5XX, 1)
    assert sum(h.state is CircuitState.OPEN for h in fleet) == allowed


def test_breaker_openings_count_toward_the_cap_but_are_not_limited_by_it() -> None:
    settings = OutlierDetectionConfig(consecutive_5xx=0, consecutive_gateway_failure=2)
    detector = OutlierDetector(settings)
    fleet = fleet_of(4, settings, CircuitBreakerConfig(failure_threshold=3))
    for health in fleet[:2]:
        feed(detector, health, fleet, Outcome.HTTP_5XX, 3)
    assert [h.state for h in fleet[:2]] == [CircuitState.OPEN] * 2  # breaker: no cap
    assert feed(detector, fleet[2], fleet, Outcome.GATEWAY_FAILURE, 2) == []  # outlier: capped
    assert not detector.may_eject(fleet)


def sweep_interval(detector, fleet, rates: Sequence[float], volume: int, now: float):
    """Give each endpoint ``volume`` requests at the given success rate, then sweep.

    Only for settings with the consecutive rules and the breaker off, so that the failures in a
    row below are judged by their success rate alone.
    """
    for health, rate in zip(fleet, rates, strict=True):
        successes = round(rate * volume)
        feed(detector, health, fleet, Outcome.SUCCESS, successes, now)
        feed(detector, health, fleet, Outcome.HTTP_5XX, volume - successes, now)
    return detector.sweep(fleet, now)


SR = OutlierDetectionConfig(
    consecutive_5xx=0,
    consecutive_gateway_failure=0,
    max_ejection_percent=100,
    success_rate_minimum_hosts=5,
    success_rate_request_volume=100,
    success_rate_stdev_factor=1.9,
)


def test_success_rate_ejects_the_statistical_outlier() -> None:
    detector = OutlierDetector(SR)
    fleet = fleet_of(6, SR)
    transitions = sweep_interval(detector, fleet, [1.0, 0.99, 1.0, 0.98, 1.0, 0.5], 100, 10.0)
    assert [(t.endpoint, t.reason) for t in transitions] == [("e5", Reason.SUCCESS_RATE)]
    assert fleet[5].opened_until == 40.0
    assert all(h.interval_requests == 0 for h in fleet)  # counters start over each interval


def test_success_rate_needs_minimum_hosts_with_volume() -> None:
    detector = OutlierDetector(SR)
    fleet = fleet_of(6, SR)
    # Two endpoints lack volume, leaving 4 < success_rate_minimum_hosts.
    for health, rate, volume in zip(
        fleet, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0], [100, 100, 100, 100, 99, 10], strict=True
    ):
        successes = round(rate * volume)
        health.interval_successes, health.interval_failures = successes, volume - successes
    assert detector.sweep(fleet, 10.0) == []
    assert all(h.state is CircuitState.CLOSED for h in fleet)


def test_success_rate_ignores_low_volume_endpoint_even_if_terrible() -> None:
    detector = OutlierDetector(SR)
    fleet = fleet_of(6, SR)
    for health in fleet[:5]:
        health.interval_successes = 100
    fleet[5].interval_failures = 99
    assert detector.sweep(fleet, 10.0) == []


def test_success_rate_stdev_factor_sets_the_bar() -> None:
    rates = [1.0, 1.0, 1.0, 1.0, 0.9, 0.8]  # mean 0.95, pstdev 0.0764
    # Bars: 2.0 -> 0.797, 1.9 -> 0.805, 0.5 -> 0.912.
    for factor, ejected in ((2.0, []), (1.9, ["e5"]), (0.5, ["e5", "e4"])):
        settings = OutlierDetectionConfig(
            consecutive_5xx=0,
            consecutive_gateway_failure=0,
            max_ejection_percent=100,
            success_rate_stdev_factor=factor,
        )
        detector = OutlierDetector(settings)
        fleet = fleet_of(6, settings)
        transitions = sweep_interval(detector, fleet, rates, 100, 10.0)
        assert [t.endpoint for t in transitions] == ejected, factor


def test_success_rate_equal_fleet_ejects_nobody() -> None:
    detector = OutlierDetector(SR)
    fleet = fleet_of(7, SR)
    assert sweep_interval(detector, fleet, [0.1] * 7, 100, 10.0) == []


def test_success_rate_obeys_the_cap_worst_first() -> None:
    settings = OutlierDetectionConfig(
        consecutive_5xx=0,
        consecutive_gateway_failure=0,
        max_ejection_percent=10,
        success_rate_stdev_factor=0.5,
    )
    detector = OutlierDetector(settings)
    fleet = fleet_of(6, settings)
    transitions = sweep_interval(detector, fleet, [1.0, 1.0, 1.0, 1.0, 0.6, 0.2], 100, 10.0)
    assert [t.endpoint for t in transitions] == ["e5"]


def test_success_rate_can_be_disabled() -> None:
    settings = OutlierDetectionConfig(
        consecutive_5xx=0, consecutive_gateway_failure=0, enabled=False
    )
    detector = OutlierDetector(settings)
    fleet = fleet_of(6, settings)
    assert sweep_interval(detector, fleet, [1.0] * 5 + [0.0], 100, 10.0) == []


def test_sweep_decays_the_multiplier_of_healthy_endpoints() -> None:
    settings = OutlierDetectionConfig(consecutive_5xx=1, max_ejection_percent=100)
    detector = OutlierDetector(settings)
    fleet = fleet_of(2, settings)
    now = 0.0
    for _ in range(3):  # eject, trial fails twice: count 3
        feed(detector, fleet[0], fleet, Outcome.HTTP_5XX, 1, now)
        now = fleet[0].opened_until
        assert fleet[0].try_acquire(now)
    assert fleet[0].ejection_count == 3
    detector.on_outcome(fleet[0], fleet, Outcome.SUCCESS, now)
    counts = []
    for i in range(1, 5):
        detector.sweep(fleet, now + 10.0 * i)
        counts.append(fleet[0].ejection_count)
    assert counts == [2, 1, 0, 0]


def test_sweep_does_not_decay_an_open_endpoint() -> None:
    settings = OutlierDetectionConfig(consecutive_5xx=1, max_ejection_percent=100)
    detector = OutlierDetector(settings)
    fleet = fleet_of(2, settings)
    feed(detector, fleet[0], fleet, Outcome.HTTP_5XX, 1)
    detector.sweep(fleet, 10.0)
    detector.sweep(fleet, 20.0)
    assert fleet[0].ejection_count == 1


@pytest.mark.parametrize(
    ("n", "open_count", "panic"),
    [(4, 1, False), (4, 2, False), (4, 3, True), (5, 2, False), (5, 3, True), (1, 1, True)],
)
def test_panic_threshold(n: int, open_count: int, panic: bool) -> None:
    settings = OutlierDetectionConfig(consecutive_5xx=1, max_ejection_percent=100)
    detector = OutlierDetector(settings)
    fleet = fleet_of(n, settings)
    for health in fleet[:open_count]:
        feed(detector, health, fleet, Outcome.HTTP_5XX, 1)
    assert detector.in_panic(fleet, 1.0) is panic
    assert not detector.in_panic(fleet, 30.0)  # open time up: routable again


def test_panic_off_and_empty_fleet() -> None:
    settings = OutlierDetectionConfig(consecutive_5xx=1, max_ejection_percent=100)
    off = OutlierDetector(
        OutlierDetectionConfig(consecutive_5xx=1, max_ejection_percent=100, panic_threshold=0)
    )
    fleet = fleet_of(2, settings)
    for health in fleet:
        off.on_outcome(health, fleet, Outcome.HTTP_5XX, 0.0)
    assert not off.in_panic(fleet, 1.0)
    assert not OutlierDetector(settings).in_panic([], 1.0)
    assert not OutlierDetector(settings).may_eject([])
