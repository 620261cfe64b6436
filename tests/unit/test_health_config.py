"""The health rules' settings are the config's own sections: defaults, derived values, errors."""

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config.model import CircuitBreakerConfig, HealthCheckConfig, OutlierDetectionConfig
from gateway.health.ejection import ejection_cap_s, open_duration_s

BACKENDS = "backends: [{url: 'http://127.0.0.1:8000'}]\n"


def test_defaults_follow_istio_and_envoy() -> None:
    od = OutlierDetectionConfig()
    assert (od.consecutive_5xx, od.consecutive_gateway_failure) == (5, 5)
    assert (od.interval, od.max_ejection_time) == (10.0, 300.0)
    assert open_duration_s(od, CircuitBreakerConfig()) == 30.0  # base_ejection_time
    assert od.max_ejection_percent == 50.0  # not Envoy's 10: see gateway.health
    assert (od.success_rate_minimum_hosts, od.success_rate_request_volume) == (5, 100)
    assert od.success_rate_stdev_factor == 1.9
    assert od.panic_threshold == 50.0
    cb = CircuitBreakerConfig()
    assert (cb.enabled, cb.failure_threshold, cb.half_open_requests) == (True, 5, 1)
    hc = HealthCheckConfig()
    assert (hc.path, hc.interval, hc.timeout) == ("/ready", 5.0, 1.0)
    assert (hc.unhealthy_threshold, hc.healthy_threshold) == (3, 2)


def test_either_name_of_the_open_duration_sets_it() -> None:
    breaker_named = CircuitBreakerConfig(recovery_time=12.0)
    assert open_duration_s(OutlierDetectionConfig(), breaker_named) == 12.0
    outlier_named = OutlierDetectionConfig(base_ejection_time=7.0)
    assert open_duration_s(outlier_named, breaker_named) == 7.0


def test_cap_never_below_base() -> None:
    od = OutlierDetectionConfig(base_ejection_time=600.0, max_ejection_time=300.0)
    assert ejection_cap_s(od, CircuitBreakerConfig()) == 600.0


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("outlier_detection: {consecutive_5xx: 0}", "outlier_detection.consecutive_5xx: must be"),
        ("outlier_detection: {interval: 0}", "outlier_detection.interval: must be greater"),
        ("outlier_detection: {base_ejection_time: -1}", "outlier_detection.base_ejection_time"),
        ("outlier_detection: {max_ejection_percent: 101}", "outlier_detection.max_ejection_perc"),
        (
            "outlier_detection: {success_rate_minimum_hosts: 0}",
            "outlier_detection.success_rate_minimum_hosts: must be greater",
        ),
        ("outlier_detection: {panic_threshold: -1}", "outlier_detection.panic_threshold: must"),
        ("circuit_breaker: {half_open_requests: 0}", "circuit_breaker.half_open_requests: must"),
        ("circuit_breaker: {failure_threshold: -1}", "circuit_breaker.failure_threshold: must"),
        ("health_check: {path: ready}", "health_check.path: must start with '/'"),
        ("health_check: {generation_path: x}", "health_check.generation_path: must start with"),
        ("health_check: {unhealthy_threshold: 0}", "health_check.unhealthy_threshold: must be"),
        ("health_check: {jitter_percent: 100}", "health_check.jitter_percent: must be between"),
    ],
)
def test_invalid_values_are_rejected_once_by_their_field_path(yaml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(BACKENDS + yaml + "\n")
