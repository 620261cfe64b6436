"""Per-endpoint verdict of the active HTTP probes; the probing loop itself lives in the gateway."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from .transition import CheckState, Reason, Transition, TransitionListener

if TYPE_CHECKING:  # the config imports this package (through gateway.failures)
    from gateway.config.model import HealthCheckConfig


class ActiveCheckState:
    """Hysteresis over probe results: ``unhealthy_threshold`` fails in a row to go unhealthy,
    ``healthy_threshold`` passes in a row to come back.

    A new endpoint starts UNKNOWN and counts as passing, and its *first* probe is decisive in
    either direction. Assuming healthy avoids a window after start-up or discovery in which no
    endpoint is routable (which would only trip panic routing to all of them anyway); making the
    first answer decisive keeps a backend that is still loading its model (``/ready`` -> 503) from
    taking traffic for ``unhealthy_threshold x interval``. Probe results never touch the circuit.

    ``config`` is the ``health_check:`` section itself; what a probe sends is one of the checks
    registered in :data:`gateway.checks.CHECKS`.
    """

    __slots__ = (
        "_listener",
        "config",
        "consecutive_fails",
        "consecutive_passes",
        "name",
        "state",
    )

    def __init__(
        self,
        config: HealthCheckConfig,
        *,
        name: str = "",
        listener: TransitionListener | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.state = CheckState.UNKNOWN
        self.consecutive_passes = 0
        self.consecutive_fails = 0
        self._listener = listener

    @property
    def passing(self) -> bool:
        """May the endpoint take traffic as far as probes are concerned?"""
        return self.state is not CheckState.UNHEALTHY

    def record(self, passed: bool, now: float) -> Transition | None:
        """Land one probe result; returns the state change it caused, if any."""
        if passed:
            self.consecutive_passes += 1
            self.consecutive_fails = 0
            if self.state is CheckState.UNKNOWN or (
                self.state is CheckState.UNHEALTHY
                and self.consecutive_passes >= self.config.healthy_threshold
            ):
                return self._move(CheckState.HEALTHY, Reason.CHECK_PASSED, now)
        else:
            self.consecutive_fails += 1
            self.consecutive_passes = 0
            if self.state is CheckState.UNKNOWN or (
                self.state is CheckState.HEALTHY
                and self.consecutive_fails >= self.config.unhealthy_threshold
            ):
                return self._move(CheckState.UNHEALTHY, Reason.CHECK_FAILED, now)
        return None

    def next_delay_s(self, rng: random.Random) -> float:
        """Seconds until the next probe: ``interval`` jittered uniformly by +-jitter_percent, so
        probes from many gateways don't arrive in lockstep."""
        jitter = self.config.jitter_percent / 100.0
        return self.config.interval * rng.uniform(1.0 - jitter, 1.0 + jitter)

    def first_delay_s(self, rng: random.Random) -> float:
        """Seconds before the first probe of a new endpoint: soon, but spread over
        ``[0, interval x jitter]`` so a fleet discovered at once is not probed in one burst."""
        jitter = self.config.jitter_percent / 100.0
        return rng.uniform(0.0, self.config.interval * jitter)

    def _move(self, to: CheckState, reason: str, now: float) -> Transition:
        transition = Transition(self.state, to, reason, self.name, now)
        self.state = to
        if self._listener is not None:
            self._listener(transition)
        return transition
