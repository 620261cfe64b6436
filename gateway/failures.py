"""The one failure vocabulary of the request path: what happened, and what it means.

Every way a try or a request can end badly is one :class:`Failure`; :data:`CONSEQUENCES` says,
for each, everything the gateway does about it: whether ``retries.retry_on`` can name it, whether
the request may have reached the backend (so a resend of a non-idempotent request is unsafe),
what the backend's health learns, the metric label, and the client's answer when nothing has been
sent yet. An upstream *status* is not a failure of the transport: :func:`status_outcome` says what
health learns from it and ``retry_on`` names it by number.

The line between "the client did it" and "the backend did it" is kept here: a client that
leaves, sends a broken body, stalls its upload or sends too much teaches the backend's health and
latency nothing (:attr:`Outcome.CANCELLED`), so no client can eject a healthy backend.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.health.outcome import Outcome, classify


class Failure(enum.Enum):
    """What went wrong, named as ``retries.retry_on`` and the metrics name it."""

    CONNECT = "connect-failure"  # refused, unreachable or connect timeout: never reached it
    RESET = "reset"  # the connection dropped before the response head
    TIMEOUT = "timeout"  # no response head within timeouts.per_try
    BROKEN_RESPONSE = "broken-response"  # the backend broke off after the first response byte
    ROUTE_TIMEOUT = "route-timeout"  # timeouts.total ran out for the whole request
    CLIENT_GONE = "client-gone"  # the client closed its connection
    HEDGE_LOST = "hedge-lost"  # a hedge whose original try answered first: cancelled
    OUTRUN = "outrun"  # a try whose hedge, sent later, answered first: cancelled, and slow
    CLIENT_BODY = "client-body"  # the client's body broke off mid-upload
    CLIENT_BODY_TIMEOUT = "client-body-timeout"  # the client's body stopped arriving
    BODY_TOO_LARGE = "body-too-large"  # the client's body went over limits.max_body
    NO_BACKEND = "no_backend"  # shed: nothing routable in the group
    OVERLOADED = "overloaded"  # shed: every backend at its limit and the queue full
    QUEUE_TIMEOUT = "queue_timeout"  # shed: no backend had room before the queue deadline


@dataclass(frozen=True, slots=True)
class Consequence:
    """What the gateway does about one :class:`Failure`."""

    retryable: bool  # may retries.retry_on name it (and so a retry follow)?
    reached_backend: bool  # may the request have been processed (unsafe to resend a POST)?
    outcome: Outcome  # what the backend's health (breaker, outlier detector) learns
    client_fault: bool  # caused by the client: never counted against the backend
    status: int  # the client's answer when no response byte has gone out yet
    error_type: str  # the JSON error's ``type`` and the X-Tailgate-Error header
    message: str

    @property
    def is_shed(self) -> bool:
        """The gateway chose not to send the request anywhere: 503 with Retry-After."""
        return self.status == 503 and not self.reached_backend and not self.retryable


def _backend(retryable: bool, reached: bool, status: int, kind: str, msg: str) -> Consequence:
    return Consequence(retryable, reached, Outcome.LOCAL_ORIGIN_FAILURE, False, status, kind, msg)


def _client(status: int, kind: str, msg: str) -> Consequence:
    return Consequence(False, True, Outcome.CANCELLED, True, status, kind, msg)


def _shed(msg: str) -> Consequence:
    return Consequence(False, False, Outcome.CANCELLED, False, 503, "overloaded", msg)


CONSEQUENCES: dict[Failure, Consequence] = {
    Failure.CONNECT: _backend(
        True, False, 502, "upstream_connect_failure", "could not connect to upstream"
    ),
    Failure.RESET: _backend(True, True, 502, "upstream_reset", "upstream closed the connection"),
    Failure.TIMEOUT: _backend(
        True, True, 504, "upstream_timeout", "upstream did not answer in time"
    ),
    Failure.BROKEN_RESPONSE: _backend(
        False, True, 502, "upstream_reset", "upstream broke off mid-response"
    ),
    Failure.ROUTE_TIMEOUT: Consequence(
        False, True, Outcome.CANCELLED, False, 504, "upstream_timeout", "route timeout exceeded"
    ),
    Failure.HEDGE_LOST: Consequence(
        False, True, Outcome.CANCELLED, False, 499, "hedge_lost", "another try answered first"
    ),
    # Outrun by a try that started a hedge delay later: evidence against this backend (a hang
    # or a pause shows as outrun tries long before a per-try timeout would), so it counts as a
    # gateway failure towards ejection. A healthy backend is outrun only in its far tail, and
    # five times in a row (consecutive_gateway_failure) only if that tail is no longer rare.
    Failure.OUTRUN: _backend(False, True, 499, "hedge_lost", "a hedge answered first"),
    Failure.CLIENT_GONE: _client(499, "client_closed_request", "the client went away"),
    Failure.CLIENT_BODY: _client(400, "bad_request", "request body broke off"),
    Failure.CLIENT_BODY_TIMEOUT: _client(
        408, "request_timeout", "request body not received in time"
    ),
    Failure.BODY_TOO_LARGE: _client(413, "body_too_large", "request body too large"),
    Failure.NO_BACKEND: _shed("no healthy backend available"),
    Failure.OVERLOADED: _shed("all backends are at capacity and the queue is full"),
    Failure.QUEUE_TIMEOUT: _shed("no backend capacity freed up in time"),
}

RETRY_CONDITIONS = frozenset(f.value for f, c in CONSEQUENCES.items() if c.retryable)


def consequence(failure: Failure) -> Consequence:
    return CONSEQUENCES[failure]


def status_outcome(status: int) -> Outcome:
    """What the backend's health learns from an answer with this status."""
    return classify(status, local_error=False)
