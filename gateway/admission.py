"""Overload protection: cap in-flight requests per backend, queue briefly, then shed.

Like Envoy's concurrency "circuit breakers" (``max_requests``, ``max_pending_requests``), with a
``queue_timeout_s`` on the wait. This module is the asyncio-free core; the gateway does the
awaiting. The intended loop for one request::

    verdict = admission.arrive(any_backend_has_room)
    if verdict is Verdict.SHED: reply 503
    if verdict is Verdict.QUEUE:
        deadline = admission.queue_deadline(now)
        try:
            wait (FIFO) until a backend has room, for at most admission.wait_left_s(deadline, now)
            (re-check on every wake-up: a waiter is woken whenever a backend's in-flight drops)
        finally:
            admission.leave_queue()
        on timeout: admission.timed_out(); reply 503
    forward

``arrive`` admits directly only while nobody is queued, so a newcomer can't overtake requests
that have been waiting (with a FIFO wake-up, the queue is first come, first served).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class AdmissionSettings:
    """``max_pending`` 0 or ``queue_timeout_s`` 0 means never queue: shed at once when full."""

    max_requests_per_backend: int = 256
    max_pending: int = 1024
    queue_timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_requests_per_backend < 1:
            raise ValueError("max_requests_per_backend: must be >= 1")
        if self.max_pending < 0:
            raise ValueError("max_pending: must be >= 0")
        if self.queue_timeout_s < 0:
            raise ValueError("queue_timeout_s: must be >= 0")


class Verdict(enum.Enum):
    ADMIT = "admit"  # forward now
    QUEUE = "queue"  # a pending slot is held: wait for room, then call leave_queue()
    SHED = "shed"  # reply 503 at once


class AdmissionController:
    """Counts requests waiting in the gateway and says admit, queue or shed."""

    __slots__ = ("pending", "settings", "shed_total")

    def __init__(self, settings: AdmissionSettings | None = None) -> None:
        self.settings = settings or AdmissionSettings()
        self.pending = 0
        self.shed_total = 0  # requests turned away: queue full, or no room in time

    def has_room(self, in_flight: int) -> bool:
        """May a backend with ``in_flight`` requests take one more?"""
        return in_flight < self.settings.max_requests_per_backend

    def arrive(self, any_room: bool) -> Verdict:
        """Decide for a new request; ``any_room`` = some candidate backend :meth:`has_room`."""
        if any_room and self.pending == 0:
            return Verdict.ADMIT
        if self.pending < self.settings.max_pending and self.settings.queue_timeout_s > 0:
            self.pending += 1
            return Verdict.QUEUE
        self.shed_total += 1
        return Verdict.SHED

    def leave_queue(self) -> None:
        """Release the pending slot taken by a QUEUE verdict (admitted, timed out or cancelled)."""
        if self.pending == 0:
            raise RuntimeError("leave_queue() without a matching QUEUE verdict")
        self.pending -= 1

    def queue_deadline(self, now: float) -> float:
        """When a request queued at ``now`` gives up (monotonic seconds)."""
        return now + self.settings.queue_timeout_s

    def wait_left_s(self, deadline: float, now: float) -> float:
        """Seconds a queued request may still wait; 0 means time is up: shed it."""
        return max(0.0, deadline - now)

    def timed_out(self) -> None:
        """Count a queued request that ran out of time before a backend had room."""
        self.shed_total += 1
