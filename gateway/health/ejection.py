"""How long an opened circuit stays open: one duration shared by the breaker and the detector.

Pure functions of the two config sections (duck-typed: any object with these fields), so the
value is derived where it is used rather than copied into a second settings class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config imports this package (through gateway.failures)
    from gateway.config.model import CircuitBreakerConfig, OutlierDetectionConfig

DEFAULT_OPEN_DURATION_S = 30.0  # Istio's base ejection time


def open_duration_s(outlier: OutlierDetectionConfig, breaker: CircuitBreakerConfig) -> float:
    """The base open duration in seconds.

    ``outlier_detection.base_ejection_time`` and ``circuit_breaker.recovery_time`` name the
    same thing (the breaker and the outlier detector share one state machine); give either.
    """
    if outlier.base_ejection_time is not None:
        return outlier.base_ejection_time
    if breaker.recovery_time is not None:
        return breaker.recovery_time
    return DEFAULT_OPEN_DURATION_S


def ejection_cap_s(outlier: OutlierDetectionConfig, breaker: CircuitBreakerConfig) -> float:
    """The longest open duration; like Envoy, never below the base one."""
    return max(outlier.max_ejection_time, open_duration_s(outlier, breaker))
