"""Fleet-aware policy: the ejection cap, success-rate ejection, multiplier decay, panic."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from .circuit import EndpointHealth
from .outcome import Outcome
from .settings import OutlierSettings
from .transition import CircuitState, Reason, Transition


def in_panic(routable: int, total: int, threshold_percent: float) -> bool:
    """Envoy's panic rule: fewer than ``threshold_percent`` of ``total`` endpoints routable
    (never with no endpoints or a threshold of 0)."""
    return total > 0 and routable * 100 < threshold_percent * total


class OutlierDetector:
    """The part of health that needs the whole fleet (one detector per backend group).

    ``fleet`` is every endpoint of the group, including the one an outcome is for. The detector
    holds no per-endpoint state, so discovery can add and remove endpoints between calls.
    """

    __slots__ = ("settings",)

    def __init__(self, settings: OutlierSettings | None = None) -> None:
        self.settings = settings or OutlierSettings()

    def on_outcome(
        self,
        health: EndpointHealth,
        fleet: Sequence[EndpointHealth],
        outcome: Outcome,
        now: float,
    ) -> Transition | None:
        """Record ``outcome`` on ``health`` (do not also call ``health.record``), then apply the
        consecutive rules under the ``max_ejection_percent`` cap.

        The fleet is only scanned when a consecutive rule has tripped, so the common path stays
        O(1).
        """
        transition = health.record(outcome, now)
        if transition is not None:
            return transition
        reason = health.consecutive_outlier_reason()
        if reason is None or not self.may_eject(fleet):
            return None
        return health.open(reason, now)

    def may_eject(self, fleet: Sequence[EndpointHealth]) -> bool:
        """Would one more ejection stay within ``max_ejection_percent``?

        Every endpoint whose circuit is not CLOSED counts as ejected, whichever rule opened it,
        because the cap exists to protect fleet capacity. One ejection is always allowed (Envoy's
        ``always_eject_one_host``), so a 3-endpoint fleet at 10% can still lose its bad one.
        """
        ejected = sum(1 for h in fleet if h.state is not CircuitState.CLOSED)
        if ejected == 0:
            return bool(fleet)
        return (ejected + 1) * 100 <= self.settings.max_ejection_percent * len(fleet)

    def sweep(self, fleet: Sequence[EndpointHealth], now: float) -> list[Transition]:
        """Run once per ``interval_s``: decay multipliers, eject success-rate outliers, then
        start a new interval's request counters. Returns the ejections it made."""
        for health in fleet:
            health.decay_ejection_count(now, self.settings.interval_s)
        transitions = self._success_rate_ejections(fleet, now)
        for health in fleet:
            health.reset_interval()
        return transitions

    def in_panic(self, fleet: Sequence[EndpointHealth], now: float) -> bool:
        """Fewer than ``panic_threshold_percent`` routable: balance across all endpoints instead,
        as Envoy does, so a fleet-wide failure degrades service rather than refusing it."""
        routable = sum(1 for h in fleet if h.is_routable(now))
        return in_panic(routable, len(fleet), self.settings.panic_threshold_percent)

    def _success_rate_ejections(
        self, fleet: Sequence[EndpointHealth], now: float
    ) -> list[Transition]:
        """Eject endpoints whose success rate is below ``mean - stdev_factor x stdev``.

        Only CLOSED endpoints with at least ``success_rate_request_volume`` requests this
        interval take part, and nothing happens unless ``success_rate_minimum_hosts`` do. The
        worst endpoints are ejected first, so the cap keeps the best of the outliers.
        """
        s = self.settings
        if not s.success_rate_enabled:
            return []
        sampled = [
            (h.interval_successes / h.interval_requests, i, h)
            for i, h in enumerate(fleet)
            if h.state is CircuitState.CLOSED
            and h.interval_requests >= s.success_rate_request_volume
        ]
        if len(sampled) < s.success_rate_minimum_hosts:
            return []
        rates = [rate for rate, _, _ in sampled]
        # statistics.mean/pstdev are exact for equal inputs, so an even fleet ejects nobody.
        threshold = statistics.mean(rates) - s.success_rate_stdev_factor * statistics.pstdev(rates)
        transitions = []
        for rate, _, health in sorted(sampled, key=lambda item: item[:2]):
            if rate >= threshold or not self.may_eject(fleet):
                break
            transitions.append(health.open(Reason.SUCCESS_RATE, now))
        return transitions
