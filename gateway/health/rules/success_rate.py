"""Envoy's success-rate ejection: at each sweep, a backend whose success rate this interval is
below ``mean - success_rate_stdev_factor x stdev`` of its group's is ejected."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.health.circuit import EndpointHealth
from gateway.health.rules.base import OutlierRule
from gateway.health.transition import CircuitState, Reason

if TYPE_CHECKING:
    from gateway.config.model import OutlierDetectionConfig


class SuccessRate(OutlierRule):
    """Only CLOSED endpoints with at least ``request_volume`` requests this interval take part,
    and nothing happens unless ``minimum_hosts`` do. The worst come first, so when the cap
    stops the ejections, the outliers left in are the better ones (Envoy walks hosts in order).
    ``stdev_factor`` is a plain factor (1.9), not Envoy's thousandths (1900)."""

    reason = Reason.SUCCESS_RATE

    def __init__(self, minimum_hosts: int, request_volume: int, stdev_factor: float) -> None:
        self.minimum_hosts = minimum_hosts
        self.request_volume = request_volume
        self.stdev_factor = stdev_factor

    def outliers(self, fleet: Sequence[EndpointHealth]) -> list[EndpointHealth]:
        sampled = [
            (h.interval_successes / h.interval_requests, i, h)
            for i, h in enumerate(fleet)
            if h.state is CircuitState.CLOSED and h.interval_requests >= self.request_volume
        ]
        if len(sampled) < self.minimum_hosts:
            return []
        rates = [rate for rate, _, _ in sampled]
        # statistics.mean/pstdev are exact for equal inputs, so an even fleet ejects nobody.
        threshold = statistics.mean(rates) - self.stdev_factor * statistics.pstdev(rates)
        ranked = sorted(sampled, key=lambda item: item[:2])
        return [health for rate, _, health in ranked if rate < threshold]


def build(config: OutlierDetectionConfig) -> SuccessRate | None:
    if not config.enabled:
        return None
    return SuccessRate(
        config.success_rate_minimum_hosts,
        config.success_rate_request_volume,
        config.success_rate_stdev_factor,
    )
