"""What every passive outlier rule is: a way a backend's own outcomes mark it an outlier."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.health.circuit import EndpointHealth


class OutlierRule:
    """One rule of the outlier detector, built from ``outlier_detection:`` by its registry entry.

    A rule overrides one or both hooks; the detector calls only the hooks a rule overrides,
    and it alone opens circuits, under ``max_ejection_percent``. ``reason`` is the registry
    name: it labels the ejection's metric and log line.
    """

    reason: str = ""

    def tripped(self, health: EndpointHealth) -> bool:
        """After each outcome, for a CLOSED endpoint: should it be ejected now?"""
        return False

    def outliers(self, fleet: Sequence[EndpointHealth]) -> list[EndpointHealth]:
        """At each ``interval`` sweep of a group: the endpoints to eject, worst first."""
        return []


def overrides(rule: OutlierRule, hook: str) -> bool:
    """Does ``rule`` implement ``hook`` (so the detector must call it)?"""
    return getattr(type(rule), hook) is not getattr(OutlierRule, hook)
