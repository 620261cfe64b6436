"""The states the health machines move through, and the record of one move."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass


class CircuitState(enum.Enum):
    """Whether real requests may reach an endpoint (see :class:`~.circuit.EndpointHealth`)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CheckState(enum.Enum):
    """What active probes say about an endpoint; UNKNOWN until the first probe answers."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class Reason:
    """Low-cardinality reason codes, safe as metric labels."""

    CIRCUIT_BREAKER = "circuit_breaker"
    CONSECUTIVE_5XX = "consecutive_5xx"
    CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"
    SUCCESS_RATE = "success_rate"
    OPEN_TIME_ELAPSED = "open_time_elapsed"
    TRIAL_SUCCEEDED = "trial_succeeded"
    TRIAL_FAILED = "trial_failed"
    CHECK_PASSED = "check_passed"
    CHECK_FAILED = "check_failed"


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change, for metrics and logs in one place.

    ``endpoint`` is the label the owner gave the machine (e.g. the backend URL); ``at`` is the
    monotonic time in seconds. ``recovered`` marks a half-open trial that closed the circuit: the
    gateway should reset the endpoint's load signals so it starts fresh.
    """

    from_state: CircuitState | CheckState
    to_state: CircuitState | CheckState
    reason: str
    endpoint: str = ""
    at: float = 0.0

    @property
    def recovered(self) -> bool:
        return self.from_state is CircuitState.HALF_OPEN and self.to_state is CircuitState.CLOSED

    @property
    def log_level(self) -> int:
        """How loudly to log this move: WARNING only when a backend loses traffic.

        Opening a circuit or failing probes takes capacity away, which an operator must see; a
        first probe passing (every healthy start), a half-open trial and a recovery are news
        at INFO, so a healthy start logs nothing at WARNING.
        """
        if self.to_state in (CircuitState.OPEN, CheckState.UNHEALTHY):
            return logging.WARNING
        return logging.INFO


TransitionListener = Callable[[Transition], None]
