"""One endpoint's circuit: CLOSED -> OPEN -> HALF_OPEN, opened by the breaker or the detector."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .active import ActiveCheckState
from .ejection import ejection_cap_s, open_duration_s
from .outcome import Outcome
from .transition import CircuitState, Reason, Transition, TransitionListener

if TYPE_CHECKING:  # the config imports this package (through gateway.failures)
    from gateway.config.model import (
        CircuitBreakerConfig,
        HealthCheckConfig,
        OutlierDetectionConfig,
    )


class EndpointHealth:
    """Decides whether requests may reach one endpoint; never chooses among endpoints.

    Every outcome lands in :meth:`record` (through :meth:`OutlierDetector.on_outcome
    <gateway.health.outlier.OutlierDetector.on_outcome>` when outlier detection is on), which
    keeps ONE set of consecutive counters shared by the breaker and the detector's consecutive
    rules, so a failure is never counted twice and the circuit opens once, by whichever rule
    trips first.

    ``outlier`` and ``breaker`` are the config's ``outlier_detection:`` and ``circuit_breaker:``
    sections themselves: they set how long the circuit opens (one duration for both rules),
    the breaker's ``failure_threshold`` and the half-open trial permits. The outlier rules
    that read the counters kept here live in :mod:`gateway.health.rules`.

    Contract with the caller: every ``True`` from :meth:`try_acquire` is followed by exactly one
    :meth:`record` of that request's outcome, ``Outcome.CANCELLED`` included, or a half-open trial
    permit is lost and the endpoint stays half-open until a restart.
    """

    __slots__ = (
        "_listener",
        "_permits_left",
        "_trials_in_flight",
        "active",
        "breaker",
        "closed_since",
        "consecutive_failures",
        "consecutive_gateway_failures",
        "ejection_count",
        "interval_failures",
        "interval_successes",
        "last_reason",
        "name",
        "opened_until",
        "outlier",
        "state",
    )

    def __init__(
        self,
        outlier: OutlierDetectionConfig,
        breaker: CircuitBreakerConfig,
        active: HealthCheckConfig | None = None,
        *,
        name: str = "",
        listener: TransitionListener | None = None,
    ) -> None:
        self.outlier = outlier
        self.breaker = breaker
        self.name = name
        self._listener = listener
        self.active = (
            ActiveCheckState(active, name=name, listener=listener) if active is not None else None
        )
        self.state = CircuitState.CLOSED
        self.ejection_count = 0
        self.opened_until: float | None = None
        self.last_reason = ""
        self.closed_since = -math.inf
        self.consecutive_failures = 0
        self.consecutive_gateway_failures = 0
        self.interval_successes = 0
        self.interval_failures = 0
        self._permits_left = 0
        self._trials_in_flight = 0

    def reconfigure(
        self,
        outlier: OutlierDetectionConfig,
        breaker: CircuitBreakerConfig,
        active: HealthCheckConfig | None,
    ) -> None:
        """A reload's new sections: the circuit, its counters and the probe verdict stay.

        Active checks turned off forget the probes' verdict (nothing would ever change it);
        turned on, the endpoint starts UNKNOWN like a new one.
        """
        self.outlier = outlier
        self.breaker = breaker
        if active is None:
            self.active = None
        elif self.active is None:
            self.active = ActiveCheckState(active, name=self.name, listener=self._listener)
        else:
            self.active.config = active

    @property
    def failure_threshold(self) -> int:
        """The breaker's consecutive-failure count to open at; 0 when the breaker is off."""
        return self.breaker.failure_threshold if self.breaker.enabled else 0

    # -- the request path ------------------------------------------------------------------

    def try_acquire(self, now: float) -> bool:
        """May a request be sent now? In HALF_OPEN a ``True`` consumes a trial permit."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if not self._open_time_up(now):
                return False
            self._move(CircuitState.HALF_OPEN, Reason.OPEN_TIME_ELAPSED, now)
            self._permits_left = self.breaker.half_open_requests
            self._trials_in_flight = 0
        if self._permits_left == 0:
            return False
        self._permits_left -= 1
        self._trials_in_flight += 1
        return True

    def record(self, outcome: Outcome, now: float) -> Transition | None:
        """Land one outcome; returns the state change it caused (for metrics/logs) or None.

        Outcomes arriving while OPEN (requests sent before it opened) are ignored, as are
        outcomes in HALF_OPEN while no trial is in flight: neither says anything about the
        endpoint's state *now*.
        """
        if self.state is CircuitState.CLOSED:
            return self._record_closed(outcome, now)
        if self.state is CircuitState.HALF_OPEN and self._trials_in_flight > 0:
            return self._record_trial(outcome, now)
        return None

    def is_routable(self, now: float) -> bool:
        """Would :meth:`try_acquire` say yes (without consuming a permit), and do probes pass?"""
        if self.active is not None and not self.active.passing:
            return False
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            return self._open_time_up(now)
        return self._permits_left > 0

    # -- used by the outlier detector and its rules -----------------------------------------

    def open(self, reason: str, now: float) -> Transition:
        """Open the circuit for ``base_ejection_time x ejection_count`` (capped).

        The count grows only while the duration is below the cap, as in Envoy, so that decay
        back to the base duration never takes more than ``cap / base`` healthy intervals.
        """
        base = open_duration_s(self.outlier, self.breaker)
        cap = ejection_cap_s(self.outlier, self.breaker)
        if base * self.ejection_count < cap:
            self.ejection_count += 1
        self.opened_until = now + min(base * self.ejection_count, cap)
        self.last_reason = reason
        self._reset_consecutive()
        self._permits_left = 0
        self._trials_in_flight = 0
        return self._move(CircuitState.OPEN, reason, now)

    @property
    def interval_requests(self) -> int:
        """Successes plus failures since the last sweep (cancelled requests excluded)."""
        return self.interval_successes + self.interval_failures

    def decay_ejection_count(self, now: float, interval_s: float) -> None:
        """Called by each sweep: one step back toward the base open duration if the endpoint
        stayed CLOSED (and probes passed) for the whole past interval."""
        closed_all_interval = (
            self.state is CircuitState.CLOSED and self.closed_since <= now - interval_s
        )
        passing = self.active is None or self.active.passing
        if closed_all_interval and passing and self.ejection_count > 0:
            self.ejection_count -= 1

    def reset_interval(self) -> None:
        """Called by each sweep after success-rate evaluation: start new interval counters."""
        self.interval_successes = 0
        self.interval_failures = 0

    def snapshot(self, now: float) -> dict[str, Any]:
        """A JSON-ready view for ``/admin/backends``."""
        open_remaining_s = None
        if self.state is CircuitState.OPEN and self.opened_until is not None:
            open_remaining_s = max(0.0, self.opened_until - now)
        return {
            "state": self.state.value,
            "routable": self.is_routable(now),
            "ejection_count": self.ejection_count,
            "open_remaining_s": open_remaining_s,
            "last_reason": self.last_reason,
            "consecutive_failures": self.consecutive_failures,
            "consecutive_gateway_failures": self.consecutive_gateway_failures,
            "interval_successes": self.interval_successes,
            "interval_failures": self.interval_failures,
            "half_open_permits_left": self._permits_left,
            "half_open_trials_in_flight": self._trials_in_flight,
            "active_check": None if self.active is None else self.active.state.value,
        }

    # -- internals ---------------------------------------------------------------------------

    def _record_closed(self, outcome: Outcome, now: float) -> Transition | None:
        if outcome is Outcome.CANCELLED:
            return None
        if not outcome.is_failure:
            self.interval_successes += 1
            self._reset_consecutive()
            return None
        self.interval_failures += 1
        self.consecutive_failures += 1
        # A non-gateway 5xx breaks a run of gateway failures, as in Envoy.
        if outcome.is_gateway_failure:
            self.consecutive_gateway_failures += 1
        else:
            self.consecutive_gateway_failures = 0
        threshold = self.failure_threshold
        if threshold and self.consecutive_failures >= threshold:
            return self.open(Reason.CIRCUIT_BREAKER, now)
        return None

    def _record_trial(self, outcome: Outcome, now: float) -> Transition | None:
        self._trials_in_flight -= 1
        if outcome is Outcome.CANCELLED:
            self._permits_left += 1  # the trial proved nothing: let another one go
            return None
        if outcome.is_failure:
            return self.open(Reason.TRIAL_FAILED, now)
        self._reset_consecutive()
        self.opened_until = None
        self.closed_since = now
        self._permits_left = 0
        self._trials_in_flight = 0
        return self._move(CircuitState.CLOSED, Reason.TRIAL_SUCCEEDED, now)

    def _open_time_up(self, now: float) -> bool:
        return self.opened_until is None or now >= self.opened_until

    def _reset_consecutive(self) -> None:
        self.consecutive_failures = 0
        self.consecutive_gateway_failures = 0

    def _move(self, to: CircuitState, reason: str, now: float) -> Transition:
        transition = Transition(self.state, to, reason, self.name, now)
        self.state = to
        if self._listener is not None:
            self._listener(transition)
        return transition
