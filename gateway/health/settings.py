"""Frozen settings for the health rules, with Istio/Envoy-like defaults.

Durations are seconds (``*_s``); percentages are 0-100. The YAML loader maps operator-facing
names onto these (``interval: 10s`` -> ``interval_s``; ``circuit_breaker.recovery_time`` ->
``OutlierSettings.base_ejection_time_s``, because the breaker and the outlier detector share one
open duration). Each class validates itself so a hand-built instance can't be nonsense either.
"""

from __future__ import annotations

from dataclasses import dataclass


def _require(ok: bool, field: str, reason: str) -> None:
    if not ok:
        raise ValueError(f"{field}: {reason}")


@dataclass(frozen=True)
class OutlierSettings:
    """Fleet-aware ejection (Envoy's ``outlier_detection``) and the shared open duration.

    A consecutive threshold of 0 turns that rule off. ``success_rate_stdev_factor`` is the plain
    factor (1.9), not Envoy's thousandths (1900). ``max_ejection_percent`` defaults to 50, not
    Envoy's and Istio's 10: inference fleets are small (10% of 4 replicas is one), and at 50 the
    outlier rules alone never push a group (of two or more) below the 50% panic threshold.
    """

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    interval_s: float = 10.0
    base_ejection_time_s: float = 30.0
    max_ejection_time_s: float = 300.0
    max_ejection_percent: float = 50.0
    success_rate_enabled: bool = True
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: float = 1.9
    panic_threshold_percent: float = 50.0

    def __post_init__(self) -> None:
        _require(self.consecutive_5xx >= 0, "consecutive_5xx", "must be >= 0")
        _require(
            self.consecutive_gateway_failure >= 0, "consecutive_gateway_failure", "must be >= 0"
        )
        _require(self.interval_s > 0, "interval_s", "must be > 0")
        _require(self.base_ejection_time_s > 0, "base_ejection_time_s", "must be > 0")
        _require(self.max_ejection_time_s > 0, "max_ejection_time_s", "must be > 0")
        _require(
            0 <= self.max_ejection_percent <= 100, "max_ejection_percent", "must be in [0, 100]"
        )
        _require(self.success_rate_minimum_hosts >= 1, "success_rate_minimum_hosts", "must be >= 1")
        _require(
            self.success_rate_request_volume >= 1, "success_rate_request_volume", "must be >= 1"
        )
        _require(self.success_rate_stdev_factor >= 0, "success_rate_stdev_factor", "must be >= 0")
        _require(
            0 <= self.panic_threshold_percent <= 100,
            "panic_threshold_percent",
            "must be in [0, 100]",
        )

    @property
    def ejection_time_cap_s(self) -> float:
        """The longest open duration; like Envoy, never below ``base_ejection_time_s``."""
        return max(self.max_ejection_time_s, self.base_ejection_time_s)


@dataclass(frozen=True)
class BreakerSettings:
    """The local, fleet-blind circuit breaker (Hystrix-style, not Envoy's concurrency limits).

    ``failure_threshold`` 0 turns the breaker rule off; its open duration is
    ``OutlierSettings.base_ejection_time_s`` (config's ``recovery_time``).
    """

    failure_threshold: int = 5
    half_open_requests: int = 1

    def __post_init__(self) -> None:
        _require(self.failure_threshold >= 0, "failure_threshold", "must be >= 0")
        _require(self.half_open_requests >= 1, "half_open_requests", "must be >= 1")


@dataclass(frozen=True)
class ActiveCheckSettings:
    """Active HTTP probes (Envoy's ``health_checks``); the probing loop lives in the gateway.

    Each delay is ``interval_s`` scaled by a uniform factor in ``[1 - j, 1 + j]`` with
    ``j = jitter_percent / 100``, so probes from many gateways don't arrive in lockstep.
    """

    path: str = "/ready"
    interval_s: float = 5.0
    timeout_s: float = 1.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2
    jitter_percent: float = 10.0

    def __post_init__(self) -> None:
        _require(self.path.startswith("/"), "path", "must start with '/'")
        _require(self.interval_s > 0, "interval_s", "must be > 0")
        _require(self.timeout_s > 0, "timeout_s", "must be > 0")
        _require(self.unhealthy_threshold >= 1, "unhealthy_threshold", "must be >= 1")
        _require(self.healthy_threshold >= 1, "healthy_threshold", "must be >= 1")
        _require(0 <= self.jitter_percent < 100, "jitter_percent", "must be in [0, 100)")
