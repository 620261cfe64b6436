"""The request-path core: one client request's decisions, pure (clock readings and RNG passed in).

    route -> group -> admit (capacity) -> pick (policy) -> try -> outcome -> retry or answer

:func:`open_exchange` routes a request and funds the retry budget; :class:`Exchange` then says
what to do at each step. It performs no I/O and never awaits: the aiohttp handler
(``gateway.handler``) does the sending, waiting and relaying around it, and the fleet simulator
(``loadtests.simulate``) drives the very same object on virtual time, so the two cannot drift
apart. tenacity drives the handler's retry loop on top of :meth:`Exchange.retry` and
:meth:`Exchange.backoff_s`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.attempt import Attempt
from gateway.capacity import Ticket
from gateway.endpoint import Endpoint
from gateway.failures import Failure, consequence
from gateway.request_info import RequestInfo
from gateway.routing import Route

if TYPE_CHECKING:
    from gateway.runtime import Runtime

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class RetryVerdict(enum.Enum):
    RETRY = "retry"  # send it again, to another backend where there is one
    ANSWER = "answer"  # give the client this try's answer
    BUDGET_EXHAUSTED = "budget_exhausted"  # a retry was allowed but the budget said no


def open_exchange(
    runtime: Runtime,
    method: str,
    path: str,
    headers: Mapping[str, str],
    request: RequestInfo,
    now: float,
) -> Exchange:
    """Route a newly arrived request, choose its group, and count it for the retry budget."""
    route = runtime.router.match(path, headers, request.model)
    group = route.pick_group(runtime.rng)
    runtime.retry_budget.record_request(now)
    return Exchange(runtime, route, group, method, request, now)


class Exchange:
    """One client request's way through the gateway's decisions."""

    __slots__ = ("method", "route", "runtime", "ticket", "tries")

    def __init__(
        self,
        runtime: Runtime,
        route: Route,
        group: str,
        method: str,
        request: RequestInfo,
        arrived_at: float,
    ) -> None:
        self.runtime = runtime
        self.route = route
        self.method = method
        self.ticket: Ticket[Endpoint] = runtime.capacity.ticket(group, arrived_at, request)
        self.tries = 0

    @property
    def request(self) -> RequestInfo:
        return self.ticket.request

    @property
    def group(self) -> str:
        return self.ticket.group

    @property
    def tried(self) -> list[str]:
        """Backends tried so far, in order (a retry prefers one not among them)."""
        return self.ticket.tried

    def admit(self, now: float) -> Endpoint | Failure | None:
        """The backend for the next try, the :class:`Failure` that sheds the request, or None:
        queued, and the grant arrives through ``self.ticket.on_grant``."""
        return self.runtime.capacity.admit(self.ticket, now)

    def give_up_waiting(self) -> Failure | None:
        """The queue deadline passed (or the client left) while queued: leave the queue.
        None if the grant was already handed over."""
        return self.runtime.capacity.expire(self.ticket)

    def start_try(self, endpoint: Endpoint) -> Attempt:
        """An :class:`Attempt` for one try at ``endpoint`` (its reserved slot turns into the
        attempt's in-flight count once the caller enters it)."""
        endpoint.reserved -= 1
        self.tried.append(endpoint.name)
        self.tries += 1
        rt = self.runtime
        prefill, decode = rt.work_sent(self.group, endpoint, self.request)
        return Attempt(
            endpoint, rt.clock, rt.metrics, rt.record_outcome, rt.capacity_freed, prefill, decode
        )

    def retry(self, what: Failure | int, replayable: bool, now: float) -> RetryVerdict:
        """May the try that ended with ``what`` (a failure, or an upstream status with no byte
        relayed yet) be sent again? Spends the retry budget when the answer is yes."""
        retries = self.runtime.config.retries
        if self.tries >= retries.attempts or not replayable:
            return RetryVerdict.ANSWER
        if isinstance(what, Failure):
            rule = consequence(what)
            if not rule.retryable or what.value not in retries.retry_on:
                return RetryVerdict.ANSWER
            reached = rule.reached_backend
        else:
            if what not in retries.retry_on:
                return RetryVerdict.ANSWER
            reached = True
        if reached and self.method not in IDEMPOTENT and not self._resend_allowed():
            return RetryVerdict.ANSWER
        if not self.runtime.retry_budget.try_spend(now):
            return RetryVerdict.BUDGET_EXHAUSTED
        return RetryVerdict.RETRY

    def backoff_s(self, rng: random.Random) -> float:
        """The jittered exponential back-off before the next try (tenacity's "full jitter"
        ``wait_random_exponential``, drawn from ``rng``)."""
        retries = self.runtime.config.retries
        high = min(retries.backoff_max, retries.backoff_base * 2 ** max(0, self.tries - 1))
        return rng.uniform(0.0, high)

    def _resend_allowed(self) -> bool:
        opted_in = self.route.retry_non_idempotent
        return (
            opted_in if opted_in is not None else self.runtime.config.retries.retry_non_idempotent
        )
