"""Retry budget: retries may add at most ``budget_percent`` to the recent request rate.

Finagle-style (``RetryBudget(ttl, minRetriesPerSec, percentCanRetry)``) rather than Envoy's
``retry_budget``, which caps *concurrent* retries as a share of active requests: a rate over a
sliding window needs no in-flight bookkeeping and still stops a retry storm when the whole fleet
fails. Over any window of ``window_s`` the number of retries allowed is::

    min_per_s x window_s + budget_percent / 100 x original requests in the window

The ``min_per_s`` floor lets a quiet service still retry its rare failure.
"""

from __future__ import annotations

import math

WINDOW_S = 10.0  # the sliding window (Finagle's ttl)
BUCKETS = 10  # the window slides one bucket (1 s) at a time


class RetryBudget:
    """Counts original requests and retries in time buckets covering the last ``window_s``.

    Call :meth:`record_request` for each *original* request only (retries must not fund further
    retries) and :meth:`try_spend` before each retry. The window slides one bucket
    (``window_s / buckets``) at a time, so memory and work per call are O(buckets).

    ``budget_percent`` and ``min_per_s`` come from the section that owns the budget, validated
    there (``retries.budget_percent`` and ``retries.min_retries_per_second`` for retries,
    ``hedging.budget_percent`` for hedges): this class is the arithmetic both share.
    """

    __slots__ = (
        "_bucket_s",
        "_ids",
        "_requests",
        "_retries",
        "budget_percent",
        "min_per_s",
        "window_s",
    )

    def __init__(
        self,
        budget_percent: float,
        min_per_s: float,
        *,
        window_s: float = WINDOW_S,
        buckets: int = BUCKETS,
    ) -> None:
        self.budget_percent = budget_percent
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._bucket_s = window_s / buckets
        self._ids = [-1] * buckets  # which absolute bucket number each slot currently holds
        self._requests = [0] * buckets
        self._retries = [0] * buckets

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
        allowance = self.min_per_s * self.window_s + self.budget_percent / 100.0 * requests
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
