"""Retry budget: retries may add at most ``budget_percent`` to the recent request rate.

Finagle-style (``RetryBudget(ttl, minRetriesPerSec, percentCanRetry)``) rather than Envoy's
``retry_budget``, which caps *concurrent* retries as a share of active requests: a rate over a
sliding window needs no in-flight bookkeeping and still stops a retry storm when the whole fleet
fails. Over any window of ``window_s`` the number of retries allowed is::

    min_retries_per_s x window_s + budget_percent / 100 x original requests in the window

The ``min_retries_per_s`` floor lets a quiet service still retry its rare failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryBudgetSettings:
    """``budget_percent`` of original requests may be retried, plus a floor per second."""

    budget_percent: float = 20.0
    min_retries_per_s: float = 3.0
    window_s: float = 10.0
    buckets: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.budget_percent <= 1000:
            raise ValueError("budget_percent: must be in [0, 1000]")
        if self.min_retries_per_s < 0:
            raise ValueError("min_retries_per_s: must be >= 0")
        if self.window_s <= 0:
            raise ValueError("window_s: must be > 0")
        if self.buckets < 1:
            raise ValueError("buckets: must be >= 1")


class RetryBudget:
    """Counts original requests and retries in time buckets covering the last ``window_s``.

    Call :meth:`record_request` for each *original* request only (retries must not fund further
    retries) and :meth:`try_spend` before each retry. The window slides one bucket
    (``window_s / buckets``) at a time, so memory and work per call are O(buckets).
    """

    __slots__ = ("_bucket_s", "_ids", "_requests", "_retries", "settings")

    def __init__(self, settings: RetryBudgetSettings | None = None) -> None:
        self.settings = settings or RetryBudgetSettings()
        n = self.settings.buckets
        self._bucket_s = self.settings.window_s / n
        self._ids = [-1] * n  # which absolute bucket number each slot currently holds
        self._requests = [0] * n
        self._retries = [0] * n

    def record_request(self, now: float) -> None:
        """Count one original request at ``now`` (monotonic seconds)."""
        self._requests[self._slot(now)] += 1

    def try_spend(self, now: float) -> bool:
        """May a retry go now? If so it is counted against the budget."""
        slot = self._slot(now)
        if self.available(now) < 1.0 - 1e-9:  # tolerate float error in the percentage
            return False
        self._retries[slot] += 1
        return True

    def available(self, now: float) -> float:
        """Retries left in the current window (fractional; a retry needs at least 1)."""
        current = self._bucket_id(now)
        oldest = current - len(self._ids) + 1
        requests = retries = 0
        for i, bucket_id in enumerate(self._ids):
            if oldest <= bucket_id <= current:
                requests += self._requests[i]
                retries += self._retries[i]
        s = self.settings
        allowance = s.min_retries_per_s * s.window_s + s.budget_percent / 100.0 * requests
        return allowance - retries

    def _bucket_id(self, now: float) -> int:
        return math.floor(now / self._bucket_s)

    def _slot(self, now: float) -> int:
        """The slot for ``now``, cleared first if it still holds an older bucket."""
        bucket_id = self._bucket_id(now)
        slot = bucket_id % len(self._ids)
        if self._ids[slot] != bucket_id:
            self._ids[slot] = bucket_id
            self._requests[slot] = 0
            self._retries[slot] = 0
        return slot
