"""The request-path core: one client request's decisions, pure (clock readings and RNG passed in).

    route -> group -> admit (capacity) -> pick (policy) -> try -> outcome -> retry or answer
                                                            `-> no answer yet: hedge

:func:`open_exchange` routes a request and funds the retry budget; :class:`Exchange` then says
what to do at each step. It performs no I/O and never awaits: the aiohttp handler
(``gateway.handler``, with ``gateway.tries``, ``gateway.hedged_race`` and ``gateway.relay``)
does the sending, waiting and relaying around it, and the fleet simulator
(``loadtests.simulate``) drives the very same object on virtual time, so the two cannot drift
apart. tenacity drives the handler's retry loop on top of :meth:`Exchange.retry` and
:meth:`Exchange.backoff_s`.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.attempt import Attempt
from gateway.capacity import Ticket
from gateway.endpoint import Endpoint
from gateway.failures import Failure, consequence
from gateway.health.outcome import Outcome
from gateway.request_info import RequestInfo
from gateway.routing import Route

if TYPE_CHECKING:
    from gateway.runtime import Runtime

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class SafePaths:
    """``retries.safe_paths`` compiled once: paths whose POSTs change nothing on the backend
    (inference: completions, embeddings, TGI's generate, Triton's infer), so that a request that
    reached one backend may still be resent to another. ``*`` matches one path segment."""

    __slots__ = ("_exact", "_pattern")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self._exact = frozenset(p for p in patterns if "*" not in p)
        wild = [re.escape(p).replace(r"\*", "[^/]+") for p in patterns if "*" in p]
        self._pattern = re.compile("|".join(wild)) if wild else None

    def match(self, path: str) -> bool:
        if path in self._exact:
            return True
        return self._pattern is not None and self._pattern.fullmatch(path) is not None


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
    runtime.hedging.record_request(now)
    resendable = method in IDEMPOTENT or _resend_allowed(runtime, route, method, path)
    return Exchange(runtime, route, group, resendable, request, now)


def _resend_allowed(runtime: Runtime, route: Route, method: str, path: str) -> bool:
    """May a non-idempotent request that reached a backend be sent to another one?"""
    opted_in = route.retry_non_idempotent
    if opted_in is None:
        opted_in = runtime.config.retries.retry_non_idempotent
    return opted_in or runtime.safe_paths.match(path)


class Exchange:
    """One client request's way through the gateway's decisions."""

    __slots__ = ("last_failure", "resendable", "route", "runtime", "ticket", "tries")

    def __init__(
        self,
        runtime: Runtime,
        route: Route,
        group: str,
        resendable: bool,
        request: RequestInfo,
        arrived_at: float,
    ) -> None:
        self.runtime = runtime
        self.route = route
        # Safe to send again after it reached a backend: an idempotent method, an inference
        # path (retries.safe_paths) or an opt-in.
        self.resendable = resendable
        self.ticket: Ticket[Endpoint] = runtime.capacity.ticket(group, arrived_at, request)
        self.tries = 0
        self.last_failure: tuple[Failure | int, str | None] | None = None  # and where

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
        prefill, decode = rt.work_sent(self.group, endpoint, self.request, self.tries == 1)
        return Attempt(
            endpoint,
            rt.clock,
            rt.metrics,
            rt.record_outcome,
            rt.capacity_freed,
            rt.hedging.observe,
            prefill,
            decode,
        )

    def hedge_delay_s(self, streaming: bool, replayable: bool) -> float | None:
        """How long the try just started may wait for an answer before a hedge follows it;
        None: this request is not hedged (not safe to send twice, body not replayable, no
        try left, hedging off, no delay learned yet, or no other backend in the group: a
        hedge never goes to the backend it hedges, so a group of one would only pay for the
        race)."""
        if not (self.resendable and replayable):
            return None
        if len(self.runtime.fleet.groups.get(self.group, ())) < 2:
            return None
        if self.tries >= self.runtime.config.retries.attempts:
            return None  # the hedge is a try too: retries.attempts bounds both
        return self.runtime.hedging.delay_s(self.group, streaming)

    def hedge(self, now: float) -> Endpoint | None:
        """The backend for a hedge of the try in flight, or None: the group is saturated (a
        queue, or no backend with room), the hedge budget is spent, or only a backend already
        tried has room (a hedge to the same backend cannot beat a stall)."""
        rt = self.runtime
        if not rt.hedging.has_budget(now) or rt.capacity.queued(self.group):
            return None
        picked = rt.capacity.pick_now(self.ticket, now)
        if picked is None:
            return None
        if picked.name in self.tried:
            self._hand_back(picked)
            return None
        rt.hedging.spend(now)
        return picked

    def _hand_back(self, endpoint: Endpoint) -> None:
        """Return a picked backend's reserved slot and circuit permit unused: no try was sent,
        so nothing is recorded (no latency sample, no try counted), only the permit handed back
        (a cancelled outcome) and the slot offered to the queue."""
        endpoint.reserved -= 1
        rt = self.runtime
        rt.record_outcome(endpoint, Outcome.CANCELLED, rt.clock())
        rt.capacity_freed(endpoint)

    def retry(self, what: Failure | int, replayable: bool, now: float) -> RetryVerdict:
        """May the try that ended with ``what`` (a failure, or an upstream status with no byte
        relayed yet) be sent again? Spends the retry budget when the answer is yes."""
        retries = self.runtime.config.retries
        previous = self.last_failure
        backend = self.tried[-1] if self.tried else None
        self.last_failure = (what, backend)
        if self.tries >= retries.attempts or not replayable:
            return RetryVerdict.ANSWER
        if previous is not None and previous[0] == what and previous[1] != backend:
            return RetryVerdict.ANSWER  # the same failure on two backends: the request's fault
        if isinstance(what, Failure):
            rule = consequence(what)
            if not rule.retryable or what.value not in retries.retry_on:
                return RetryVerdict.ANSWER
            reached = rule.reached_backend
        else:
            if what not in retries.retry_on:
                return RetryVerdict.ANSWER
            reached = True
        if reached and not self.resendable:
            return RetryVerdict.ANSWER
        if not self.runtime.retry_budget.try_spend(now):
            return RetryVerdict.BUDGET_EXHAUSTED
        return RetryVerdict.RETRY

    def may_resume(self, replayable: bool, now: float) -> bool:
        """May a stream that broke after its first byte be continued on another backend?
        Only a request safe to send again, within retries.attempts and the retry budget."""
        if not (self.resendable and replayable):
            return False
        if self.tries >= self.runtime.config.retries.attempts:
            return False
        return self.runtime.retry_budget.try_spend(now)

    def backoff_s(self, rng: random.Random) -> float:
        """The jittered exponential back-off before the next try (tenacity's "full jitter"
        ``wait_random_exponential``, drawn from ``rng``)."""
        retries = self.runtime.config.retries
        high = min(retries.backoff_max, retries.backoff_base * 2 ** max(0, self.tries - 1))
        return rng.uniform(0.0, high)
