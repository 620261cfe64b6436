"""Envoy's failure-percentage ejection: at each sweep, a backend whose failures this interval
are at least ``failure_percentage_threshold`` percent of its requests is ejected.

Success-rate ejection is relative (worse than the group by ``stdev_factor`` deviations), so
it ejects nobody when the whole group is equally bad; this rule is absolute. Off unless
``failure_percentage_threshold`` is set, as in Envoy (``enforcing_failure_percentage: 0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.health.circuit import EndpointHealth
from gateway.health.rules.base import OutlierRule
from gateway.health.transition import CircuitState

if TYPE_CHECKING:
    from gateway.config.model import OutlierDetectionConfig


class FailurePercentage(OutlierRule):
    """Only CLOSED endpoints with at least ``request_volume`` requests this interval take part,
    and nothing happens unless ``minimum_hosts`` do (Envoy's rules). Worst first."""

    reason = "failure_percentage"

    def __init__(self, threshold_percent: float, minimum_hosts: int, request_volume: int) -> None:
        self.threshold_percent = threshold_percent
        self.minimum_hosts = minimum_hosts
        self.request_volume = request_volume

    def outliers(self, fleet: Sequence[EndpointHealth]) -> list[EndpointHealth]:
        sampled = [
            (h.interval_failures * 100 / h.interval_requests, i, h)
            for i, h in enumerate(fleet)
            if h.state is CircuitState.CLOSED and h.interval_requests >= self.request_volume
        ]
        if len(sampled) < self.minimum_hosts:
            return []
        failing = [item for item in sampled if item[0] >= self.threshold_percent]
        return [health for _, _, health in sorted(failing, key=lambda item: (-item[0], item[1]))]


def build(config: OutlierDetectionConfig) -> FailurePercentage | None:
    if not config.enabled or config.failure_percentage_threshold is None:
        return None
    return FailurePercentage(
        config.failure_percentage_threshold,
        config.failure_percentage_minimum_hosts,
        config.failure_percentage_request_volume,
    )
