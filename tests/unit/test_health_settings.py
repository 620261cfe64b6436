import dataclasses

import pytest

from gateway.health import ActiveCheckSettings, BreakerSettings, OutlierSettings


def test_defaults_follow_istio_and_envoy() -> None:
    s = OutlierSettings()
    assert (s.consecutive_5xx, s.consecutive_gateway_failure) == (5, 5)
    assert (s.interval_s, s.base_ejection_time_s, s.max_ejection_time_s) == (10.0, 30.0, 300.0)
    assert s.max_ejection_percent == 50.0  # not Envoy's 10: see OutlierSettings
    assert (s.success_rate_minimum_hosts, s.success_rate_request_volume) == (5, 100)
    assert s.success_rate_stdev_factor == 1.9
    assert s.panic_threshold_percent == 50.0
    assert BreakerSettings() == BreakerSettings(failure_threshold=5, half_open_requests=1)
    a = ActiveCheckSettings()
    assert (a.path, a.interval_s, a.timeout_s) == ("/ready", 5.0, 1.0)
    assert (a.unhealthy_threshold, a.healthy_threshold) == (3, 2)


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        OutlierSettings().interval_s = 1.0  # type: ignore[misc]


def test_cap_never_below_base() -> None:
    s = OutlierSettings(base_ejection_time_s=600.0, max_ejection_time_s=300.0)
    assert s.ejection_time_cap_s == 600.0


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (OutlierSettings, {"consecutive_5xx": -1}, "consecutive_5xx"),
        (OutlierSettings, {"interval_s": 0}, "interval_s"),
        (OutlierSettings, {"base_ejection_time_s": -1}, "base_ejection_time_s"),
        (OutlierSettings, {"max_ejection_percent": 101}, "max_ejection_percent"),
        (OutlierSettings, {"success_rate_minimum_hosts": 0}, "success_rate_minimum_hosts"),
        (OutlierSettings, {"success_rate_stdev_factor": -0.1}, "success_rate_stdev_factor"),
        (OutlierSettings, {"panic_threshold_percent": -1}, "panic_threshold_percent"),
        (BreakerSettings, {"half_open_requests": 0}, "half_open_requests"),
        (BreakerSettings, {"failure_threshold": -1}, "failure_threshold"),
        (ActiveCheckSettings, {"path": "ready"}, "path"),
        (ActiveCheckSettings, {"unhealthy_threshold": 0}, "unhealthy_threshold"),
        (ActiveCheckSettings, {"jitter_percent": 100}, "jitter_percent"),
    ],
)
def test_invalid_values_name_the_field(cls: type, kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        cls(**kwargs)
