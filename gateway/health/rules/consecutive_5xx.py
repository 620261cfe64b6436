"""Envoy's ``consecutive_5xx``: this many failures in a row of any kind (5xx, gateway failure,
local-origin error) eject the backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.health.circuit import EndpointHealth
from gateway.health.rules.base import OutlierRule
from gateway.health.transition import Reason

if TYPE_CHECKING:
    from gateway.config.model import OutlierDetectionConfig


class Consecutive5xx(OutlierRule):
    """Compared with ``>=`` rather than Envoy's ``==``, so an ejection refused by the cap is
    tried again on the next failure instead of being forgotten."""

    reason = Reason.CONSECUTIVE_5XX

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold

    def tripped(self, health: EndpointHealth) -> bool:
        return health.consecutive_failures >= self.threshold


def build(config: OutlierDetectionConfig) -> Consecutive5xx | None:
    if not config.enabled or config.consecutive_5xx <= 0:
        return None
    return Consecutive5xx(config.consecutive_5xx)
