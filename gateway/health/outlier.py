"""Fleet-aware policy: the registered outlier rules under the ejection cap, decay, panic."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .circuit import EndpointHealth
from .outcome import Outcome
from .rules import build_rules, overrides
from .transition import CircuitState, Transition

if TYPE_CHECKING:  # the config imports this package (through gateway.failures)
    from gateway.config.model import OutlierDetectionConfig


def in_panic(routable: int, total: int, threshold_percent: float) -> bool:
    """Envoy's panic rule: fewer than ``threshold_percent`` of ``total`` endpoints routable
    (never with no endpoints or a threshold of 0)."""
    return total > 0 and routable * 100 < threshold_percent * total


class OutlierDetector:
    """The part of health that needs the whole fleet (one detector per backend group).

    ``fleet`` is every endpoint of the group, including the one an outcome is for. The detector
    holds no per-endpoint state, so discovery can add and remove endpoints between calls, and a
    reload builds a new detector from the new ``outlier_detection:`` section while every
    endpoint keeps its counters. Its rules are the ones that section turns on, from
    :data:`gateway.health.rules.RULES`.
    """

    __slots__ = ("_after_outcome", "_at_sweep", "config")

    def __init__(self, config: OutlierDetectionConfig) -> None:
        self.config = config
        rules = build_rules(config)
        self._after_outcome = [rule for rule in rules if overrides(rule, "tripped")]
        self._at_sweep = [rule for rule in rules if overrides(rule, "outliers")]

    def on_outcome(
        self,
        health: EndpointHealth,
        fleet: Sequence[EndpointHealth],
        outcome: Outcome,
        now: float,
    ) -> Transition | None:
        """Record ``outcome`` on ``health`` (do not also call ``health.record``), then apply the
        per-outcome rules under the ``max_ejection_percent`` cap: the first that trips names
        the ejection.

        The fleet is only scanned when a rule has tripped, so the common path stays O(1).
        """
        transition = health.record(outcome, now)
        if transition is not None or health.state is not CircuitState.CLOSED:
            return transition
        for rule in self._after_outcome:
            if rule.tripped(health):
                return health.open(rule.reason, now) if self.may_eject(fleet) else None
        return None

    def may_eject(self, fleet: Sequence[EndpointHealth]) -> bool:
        """Would one more ejection stay within ``max_ejection_percent``?

        Every endpoint whose circuit is not CLOSED counts as ejected, whichever rule opened it,
        because the cap exists to protect fleet capacity. One ejection is always allowed (Envoy's
        ``always_eject_one_host``), so a 3-endpoint fleet at 10% can still lose its bad one.
        """
        ejected = sum(1 for h in fleet if h.state is not CircuitState.CLOSED)
        if ejected == 0:
            return bool(fleet)
        return (ejected + 1) * 100 <= self.config.max_ejection_percent * len(fleet)

    def sweep(self, fleet: Sequence[EndpointHealth], now: float) -> list[Transition]:
        """Run once per ``interval``: decay multipliers, eject the sweep rules' outliers (worst
        first, while the cap allows), then start a new interval's request counters. Returns the
        ejections it made. With ``outlier_detection.enabled: false`` a sweep does nothing.
        """
        if not self.config.enabled:
            return []
        for health in fleet:
            health.decay_ejection_count(now, self.config.interval)
        transitions = []
        for rule in self._at_sweep:
            for health in rule.outliers(fleet):
                if not self.may_eject(fleet):
                    break
                transitions.append(health.open(rule.reason, now))
        for health in fleet:
            health.reset_interval()
        return transitions

    def in_panic(self, fleet: Sequence[EndpointHealth], now: float) -> bool:
        """Fewer than ``panic_threshold`` percent routable: balance across all endpoints instead,
        as Envoy does, so a fleet-wide failure degrades service rather than refusing it."""
        routable = sum(1 for h in fleet if h.is_routable(now))
        return in_panic(routable, len(fleet), self.config.panic_threshold)
