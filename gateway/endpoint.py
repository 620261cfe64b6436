"""One backend as the gateway sees it: where it is, what it weighs, how it is doing.

An :class:`Endpoint` composes the three concerns that describe a backend — its load signals
(``gateway.load``) and its health state (``gateway.health``: circuit, outlier counters and
active-check state) — without knowing their insides. Outcomes are recorded on it only
through :class:`gateway.attempt.Attempt`.
"""

from __future__ import annotations

from yarl import URL

from gateway.health.circuit import EndpointHealth
from gateway.load.signals import EndpointSignals


class Endpoint:
    """A backend: name, base URL, capacity weight, group, signals and health."""

    __slots__ = ("group", "health", "name", "public_name", "reserved", "signals", "url", "weight")

    def __init__(
        self,
        name: str,
        url: str,
        weight: float,
        group: str,
        signals: EndpointSignals,
        health: EndpointHealth,
        public_name: str | None = None,
    ) -> None:
        self.name = name
        self.url = URL(url)
        self.weight = weight
        self.group = group
        self.signals = signals
        self.health = health
        self.public_name = public_name or name  # what clients may see (X-Tailgate-Backend)
        # Picked for a try that has not started yet (a slot handed to a queued request): counts
        # against the per-backend limit like a request in flight, so one freed slot is handed
        # to one request only.
        self.reserved = 0

    @property
    def load(self) -> int:
        """Requests held against ``limits.max_requests_per_backend``: in flight or reserved."""
        return self.signals.in_flight + self.reserved

    def routable(self, now: float) -> bool:
        """May this endpoint be offered to the balancer for a new request?"""
        return self.health.is_routable(now)

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r}, {str(self.url)!r})"
