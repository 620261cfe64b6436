"""How one forwarded request ended, reduced to what the health rules need."""

from __future__ import annotations

import enum

GATEWAY_STATUSES = frozenset({502, 503, 504})


class Outcome(enum.Enum):
    """The result of one try against one endpoint.

    ``CANCELLED`` (the client went away) says nothing about the endpoint and counts for nothing;
    it still has to be recorded so a half-open trial permit is handed back.
    """

    SUCCESS = "success"
    HTTP_5XX = "http_5xx"
    GATEWAY_FAILURE = "gateway_failure"
    LOCAL_ORIGIN_FAILURE = "local_origin_failure"
    CANCELLED = "cancelled"

    @property
    def is_failure(self) -> bool:
        """Counts toward ``consecutive_5xx`` and the breaker's ``failure_threshold``."""
        return self in _FAILURES

    @property
    def is_gateway_failure(self) -> bool:
        """Counts toward ``consecutive_gateway_failure`` (502/503/504 and local-origin errors)."""
        return self in _GATEWAY_FAILURES


_FAILURES = frozenset(
    {Outcome.HTTP_5XX, Outcome.GATEWAY_FAILURE, Outcome.LOCAL_ORIGIN_FAILURE},
)
_GATEWAY_FAILURES = frozenset({Outcome.GATEWAY_FAILURE, Outcome.LOCAL_ORIGIN_FAILURE})


def classify(status: int | None, local_error: bool, cancelled: bool = False) -> Outcome:
    """Map a try's result to an :class:`Outcome`.

    Precedence: a cancelled try counts for nothing even if an error was raised while it was being
    torn down; a local error (connect refused, reset, timeout) wins over any status, because a
    status seen before a reset mid-stream does not describe how the try ended. A missing status
    without a local error is a programming error and is rejected rather than guessed.
    """
    if cancelled:
        return Outcome.CANCELLED
    if local_error:
        return Outcome.LOCAL_ORIGIN_FAILURE
    if status is None:
        raise ValueError("classify() needs a status when there is no local error")
    if status in GATEWAY_STATUSES:
        return Outcome.GATEWAY_FAILURE
    if status >= 500:
        return Outcome.HTTP_5XX
    return Outcome.SUCCESS
