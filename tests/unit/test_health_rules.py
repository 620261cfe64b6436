"""The outlier rules' registry: each rule one module and one entry, applied by the detector."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from gateway.config.model import CircuitBreakerConfig, OutlierDetectionConfig
from gateway.health import RULES, CircuitState, EndpointHealth, Outcome, OutlierDetector
from gateway.health.rules import OutlierRule, build_rules
from gateway.health.rules.consecutive_5xx import Consecutive5xx
from gateway.health.rules.consecutive_gateway_failure import ConsecutiveGatewayFailure
from gateway.health.rules.success_rate import SuccessRate
from gateway.health.transition import Reason

BREAKER_OFF = CircuitBreakerConfig(enabled=False)


def fleet_of(n: int, config: OutlierDetectionConfig) -> list[EndpointHealth]:
    return [EndpointHealth(config, BREAKER_OFF, name=f"e{i}") for i in range(n)]


def test_every_registered_rule_is_on_by_default_and_named_by_its_reason() -> None:
    rules = build_rules(OutlierDetectionConfig())
    assert [rule.reason for rule in rules] == list(RULES)
    assert set(RULES) <= {v for k, v in vars(Reason).items() if not k.startswith("_")}


def test_outlier_detection_off_turns_every_rule_off() -> None:
    assert build_rules(OutlierDetectionConfig(enabled=False)) == []


def test_each_rule_reads_its_own_fields() -> None:
    config = OutlierDetectionConfig(consecutive_5xx=7, consecutive_gateway_failure=2)
    gateway, five_xx, success = build_rules(config)
    assert isinstance(gateway, ConsecutiveGatewayFailure) and gateway.threshold == 2
    assert isinstance(five_xx, Consecutive5xx) and five_xx.threshold == 7
    assert isinstance(success, SuccessRate) and success.stdev_factor == 1.9


class EveryRequestFailed(OutlierRule):
    """A rule a newcomer might add: eject at the sweep a backend whose every request this
    interval failed (at least ``volume`` of them)."""

    reason = "every_request_failed"

    def __init__(self, volume: int) -> None:
        self.volume = volume

    def outliers(self, fleet: Sequence[EndpointHealth]) -> list[EndpointHealth]:
        return [
            h
            for h in fleet
            if h.state is CircuitState.CLOSED
            and h.interval_requests >= self.volume
            and h.interval_successes == 0
        ]


def test_a_new_rule_is_one_class_and_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RULES, "every_request_failed", lambda config: EveryRequestFailed(3))
    config = OutlierDetectionConfig(
        consecutive_5xx=100, consecutive_gateway_failure=100, max_ejection_percent=100
    )
    detector = OutlierDetector(config)
    fleet = fleet_of(3, config)
    for _ in range(3):
        detector.on_outcome(fleet[2], fleet, Outcome.HTTP_5XX, 1.0)
        detector.on_outcome(fleet[0], fleet, Outcome.SUCCESS, 1.0)
    [transition] = detector.sweep(fleet, 10.0)
    assert (transition.endpoint, transition.reason) == ("e2", "every_request_failed")
    assert fleet[2].state is CircuitState.OPEN


def test_a_new_rules_ejections_obey_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RULES, "every_request_failed", lambda config: EveryRequestFailed(1))
    config = OutlierDetectionConfig(enabled=True, max_ejection_percent=34)
    detector = OutlierDetector(config)
    fleet = fleet_of(3, config)
    for health in fleet:
        detector.on_outcome(health, fleet, Outcome.HTTP_5XX, 1.0)
    assert [t.endpoint for t in detector.sweep(fleet, 10.0)] == ["e0"]  # one of three at 34%


def test_the_first_rule_that_trips_names_the_ejection() -> None:
    config = OutlierDetectionConfig(consecutive_5xx=2, consecutive_gateway_failure=2)
    detector = OutlierDetector(config)
    fleet = fleet_of(3, config)
    detector.on_outcome(fleet[0], fleet, Outcome.GATEWAY_FAILURE, 0.0)
    transition = detector.on_outcome(fleet[0], fleet, Outcome.GATEWAY_FAILURE, 0.0)
    assert transition is not None
    assert transition.reason == Reason.CONSECUTIVE_GATEWAY_FAILURE  # registry order
