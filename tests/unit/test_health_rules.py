"""The outlier rules' registry: each rule one module and one entry, applied by the detector."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from gateway.config.model import CircuitBreakerConfig, OutlierDetectionConfig
from gateway.health import RULES, CircuitState, EndpointHealth, Outcome, OutlierDetector
from gateway.health.rules import build_rules
from gateway.health.rules.consecutive_5xx import Consecutive5xx
from gateway.health.rules.consecutive_gateway_failure import ConsecutiveGatewayFailure
from gateway.health.rules.success_rate import SuccessRate
from gateway.health.transition import Reason

BREAKER_OFF = CircuitBreakerConfig(enabled=False)
README = Path(__file__).resolve().parents[2] / "README.md"


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
