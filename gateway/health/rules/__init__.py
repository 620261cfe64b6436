"""The outlier detector's passive rules: one module each, one entry in :data:`RULES`.

A rule reads the counters :class:`~gateway.health.circuit.EndpointHealth` keeps for every
outcome (consecutive failures, consecutive gateway failures, this interval's successes and
failures) and says which endpoints to eject: after each outcome (:meth:`OutlierRule.tripped`)
or at each ``outlier_detection.interval`` sweep (:meth:`OutlierRule.outliers`). Its entry
builds it from the ``outlier_detection:`` section, or returns None where that section turns
it off. Rules are tried in registry order; the first that trips names the ejection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.health.rules import (
    consecutive_5xx,
    consecutive_gateway_failure,
    failure_percentage,
    success_rate,
)
from gateway.health.rules.base import OutlierRule, overrides

if TYPE_CHECKING:
    from gateway.config.model import OutlierDetectionConfig

RULES: dict[str, Callable[[OutlierDetectionConfig], OutlierRule | None]] = {
    "consecutive_gateway_failure": consecutive_gateway_failure.build,
    "consecutive_5xx": consecutive_5xx.build,
    "success_rate": success_rate.build,
    "failure_percentage": failure_percentage.build,
}


def build_rules(config: OutlierDetectionConfig) -> list[OutlierRule]:
    """The rules ``config`` turns on, in registry order."""
    return [rule for build in RULES.values() if (rule := build(config)) is not None]


__all__ = ["RULES", "OutlierRule", "build_rules", "overrides"]
