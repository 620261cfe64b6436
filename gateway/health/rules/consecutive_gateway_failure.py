"""Envoy's ``consecutive_gateway_failure``: this many 502/503/504s or local-origin errors
(connect refused, reset, timeout) in a row eject the backend; a plain 500 breaks the run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.health.circuit import EndpointHealth
from gateway.health.rules.base import OutlierRule
from gateway.health.transition import Reason

if TYPE_CHECKING:
    from gateway.config.model import OutlierDetectionConfig


class ConsecutiveGatewayFailure(OutlierRule):
    """Compared with ``>=``, as :class:`~gateway.health.rules.consecutive_5xx.Consecutive5xx`."""

    reason = Reason.CONSECUTIVE_GATEWAY_FAILURE

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold

    def tripped(self, health: EndpointHealth) -> bool:
        return health.consecutive_gateway_failures >= self.threshold


def build(config: OutlierDetectionConfig) -> ConsecutiveGatewayFailure | None:
    if not config.enabled or config.consecutive_gateway_failure <= 0:
        return None
    return ConsecutiveGatewayFailure(config.consecutive_gateway_failure)
