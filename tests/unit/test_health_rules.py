"""The outlier rules' registry: each rule one module and one entry, applied by the detector."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import ModuleType

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config.model import CircuitBreakerConfig, OutlierDetectionConfig
from gateway.health import RULES, CircuitState, EndpointHealth, Outcome, OutlierDetector
from gateway.health.rules import build_rules
from gateway.health.rules.consecutive_5xx import Consecutive5xx
from gateway.health.rules.consecutive_gateway_failure import ConsecutiveGatewayFailure
from gateway.health.rules.failure_percentage import FailurePercentage
from gateway.health.rules.success_rate import SuccessRate
from gateway.health.transition import Reason

BREAKER_OFF = CircuitBreakerConfig(enabled=False)
BACKENDS_YAML = "backends: [{url: 'http://127.0.0.1:8000'}]\n"
README = Path(__file__).resolve().parents[2] / "README.md"


def fleet_of(n: int, config: OutlierDetectionConfig) -> list[EndpointHealth]:
    return [EndpointHealth(config, BREAKER_OFF, name=f"e{i}") for i in range(n)]


def test_every_rule_is_named_by_its_entry_and_all_but_failure_percentage_are_on() -> None:
    config = OutlierDetectionConfig(failure_percentage_threshold=85.0)
    assert [rule.reason for rule in build_rules(config)] == list(RULES)
    on_by_default = [rule.reason for rule in build_rules(OutlierDetectionConfig())]
    assert on_by_default == [name for name in RULES if name != "failure_percentage"]


def test_outlier_detection_off_turns_every_rule_off() -> None:
    assert build_rules(OutlierDetectionConfig(enabled=False)) == []


def test_each_rule_reads_its_own_fields() -> None:
    config = OutlierDetectionConfig(consecutive_5xx=7, consecutive_gateway_failure=2)
    gateway, five_xx, success = build_rules(config)
    assert isinstance(gateway, ConsecutiveGatewayFailure) and gateway.threshold == 2
    assert isinstance(five_xx, Consecutive5xx) and five_xx.threshold == 7
    assert isinstance(success, SuccessRate) and success.stdev_factor == 1.9


def readme_rule() -> ModuleType:
    """The worked example of README's "Extending tailgate", as the module a newcomer writes."""
    text = README.read_text()
    start = text.index("# gateway/health/rules/all_failed.py")
    module = ModuleType("all_failed")
    exec(compile(text[start : text.index("```", start)], "all_failed.py", "exec"), vars(module))
    return module


def test_the_readme_rule_is_one_module_and_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RULES, "all_failed", readme_rule().build)
    config = OutlierDetectionConfig(
        consecutive_5xx=100,
        consecutive_gateway_failure=100,
        max_ejection_percent=100,
        success_rate_request_volume=3,
    )
    detector = OutlierDetector(config)
    fleet = fleet_of(3, config)
    for _ in range(3):
        detector.on_outcome(fleet[2], fleet, Outcome.HTTP_5XX, 1.0)
        detector.on_outcome(fleet[0], fleet, Outcome.SUCCESS, 1.0)
    [transition] = detector.sweep(fleet, 10.0)
    assert (transition.endpoint, transition.reason) == ("e2", "all_failed")
    assert fleet[2].state is CircuitState.OPEN


def test_a_new_rules_ejections_obey_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RULES, "all_failed", readme_rule().build)
    config = OutlierDetectionConfig(max_ejection_percent=34, success_rate_request_volume=1)
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


def failing(
    detector: OutlierDetector, fleet: list[EndpointHealth], failures: list[int], volume: int
) -> None:
    """This interval, backend i answers ``volume`` requests of which ``failures[i]`` fail."""
    for health, failed in zip(fleet, failures, strict=True):
        for i in range(volume):
            outcome = Outcome.HTTP_5XX if i < failed else Outcome.SUCCESS
            detector.on_outcome(health, fleet, outcome, 1.0)


FAILURE_PERCENTAGE = OutlierDetectionConfig(
    consecutive_5xx=1000,
    consecutive_gateway_failure=1000,
    max_ejection_percent=100,
    success_rate_stdev_factor=100,  # success rate out of the way
    failure_percentage_threshold=85.0,
    failure_percentage_minimum_hosts=3,
    failure_percentage_request_volume=20,
)


def test_failure_percentage_ejects_at_the_threshold_worst_first() -> None:
    detector = OutlierDetector(FAILURE_PERCENTAGE)
    fleet = fleet_of(4, FAILURE_PERCENTAGE)
    failing(detector, fleet, [17, 20, 16, 0], volume=20)  # 85%, 100%, 80%, 0%
    transitions = detector.sweep(fleet, 10.0)
    assert [(t.endpoint, t.reason) for t in transitions] == [
        ("e1", "failure_percentage"),
        ("e0", "failure_percentage"),
    ]


def test_failure_percentage_is_absolute_where_success_rate_is_relative() -> None:
    """A group failing evenly: success rate sees no outlier, failure percentage ejects (up to
    the cap)."""
    config = dataclasses.replace(FAILURE_PERCENTAGE, max_ejection_percent=50)
    detector = OutlierDetector(config)
    fleet = fleet_of(4, config)
    failing(detector, fleet, [18, 18, 18, 18], volume=20)
    assert len(detector.sweep(fleet, 10.0)) == 2  # the cap: half of four


def test_failure_percentage_needs_volume_and_hosts() -> None:
    detector = OutlierDetector(FAILURE_PERCENTAGE)
    fleet = fleet_of(4, FAILURE_PERCENTAGE)
    failing(detector, fleet, [19, 19, 0, 0], volume=19)  # below the request volume
    assert detector.sweep(fleet, 10.0) == []
    fleet = fleet_of(2, FAILURE_PERCENTAGE)  # fewer than the minimum hosts
    failing(detector, fleet, [20, 0], volume=20)
    assert detector.sweep(fleet, 10.0) == []


def test_failure_percentage_is_configured_by_its_envoy_names() -> None:
    config = parse_config(
        BACKENDS_YAML + "outlier_detection: {failure_percentage_threshold: 90,"
        " failure_percentage_minimum_hosts: 2, failure_percentage_request_volume: 10}\n"
    )
    [rule] = [r for r in build_rules(config.outlier_detection) if r.reason == "failure_percentage"]
    assert isinstance(rule, FailurePercentage)
    assert (rule.threshold_percent, rule.minimum_hosts, rule.request_volume) == (90.0, 2, 10)
    assert config.outlier_detection == dataclasses.replace(
        OutlierDetectionConfig(),
        failure_percentage_threshold=90.0,
        failure_percentage_minimum_hosts=2,
        failure_percentage_request_volume=10,
    )
    with pytest.raises(ConfigError, match=r"outlier_detection\.failure_percentage_threshold: "):
        parse_config(BACKENDS_YAML + "outlier_detection: {failure_percentage_threshold: 101}\n")
