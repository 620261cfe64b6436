"""The request path's entry: read the request, decide what it is, and hand it to the tries.

Every decision (route, group, admission, pick, what a failure means, whether to retry) is made
by the pure core in ``gateway.exchange`` / ``gateway.capacity`` / ``gateway.failures``; the
handler and its steps only perform what it decides, around aiohttp and the pooled upstream
client:

    client -> open_exchange (route, group) -> admit (capacity: pick, queue or shed)
           -> try (gateway.tries; raced by gateway.hedged_race) -> Exchange.retry (tenacity
              drives the loop) -> relay the answer (gateway.relay; resumed after a break by
              gateway.relay_resume)
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable

from aiohttp import web
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from gateway.access_log import AccessEntry, AccessLog
from gateway.cache import CACHE_HEADER, replay
from gateway.deadline import Deadlines, SlotTimers
from gateway.errors import error_response, shed_response
from gateway.exchange import Exchange, open_exchange
from gateway.failures import Failure, consequence
from gateway.framing import local_answer
from gateway.headers import header_bytes, request_id_from
from gateway.hedged_race import hedged
from gateway.listener import UNSUPPORTED_VERSION
from gateway.pending_queue import Priority
from gateway.proxy import BodyTooLarge, RequestBody, UpstreamFailure
from gateway.relay import answer_try
from gateway.request_context import (
    RequestContext,
    RetryableTry,
    Shed,
    abort,
    client_failure,
    failure_response,
)
from gateway.request_parse import parse_request
from gateway.routing import find_model
from gateway.runtime import Runtime
from gateway.tenants import Refusal
from gateway.tries import acquire, send, start_try


class ProxyHandler:
    """The aiohttp handler of the public listener."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.access_log = AccessLog()
        self.deadlines = Deadlines(SlotTimers())  # route timeouts (gateway.deadline)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        rt = self.runtime
        config = rt.config
        rid = request_id_from(request.headers, config.headers.request_id)
        ctx = RequestContext(request, rt, config, rid, rt.clock())
        if rt.tracer is not None:  # tracing: continue the client's trace or start one
            ctx.trace = rt.tracer.start(request.headers, request.method, request.path)
        response: web.StreamResponse | None = None
        try:
            response = await self._handle(ctx)
            return response
        finally:
            self._finish(ctx, response)

    async def _handle(self, ctx: RequestContext) -> web.StreamResponse:
        request, config, rid = ctx.request, ctx.config, ctx.request_id
        rt = self.runtime
        # Requests the gateway cannot frame or forward safely are answered here (framing.py).
        # (a request's own state is empty unless the listener marked its version: no lookup)
        version_ok = len(request) == 0 or UNSUPPORTED_VERSION not in request
        answer = local_answer(request.method, request.raw_path, request.path, version_ok)
        if answer is not None:
            if answer.status >= 400:
                return error_response(
                    answer.status, answer.kind, answer.message, rid, answer.headers
                )
            return web.Response(status=answer.status, headers=answer.headers)
        if header_bytes(request.raw_headers) > config.limits.max_header_size:
            return error_response(431, "headers_too_large", "request headers too large", rid)
        length = request.content_length
        if length is not None and length > config.limits.max_body:
            return failure_response(Failure.BODY_TOO_LARGE, rid)
        timeouts, router = config.timeouts, rt.router
        ctx.body = body = RequestBody(
            request, config.limits.max_body, timeouts.request_body_idle, timeouts.request_body
        )
        try:  # routing on the body's model reads the whole body (up to max_body) first
            await body.buffer_if_small(
                config.limits.max_body if router.needs_model else config.retries.buffer_limit
            )
        except UpstreamFailure as failure:  # the client's body broke off or stalled
            return client_failure(ctx, failure.failure)
        except BodyTooLarge:
            return failure_response(Failure.BODY_TOO_LARGE, rid)
        # What the body says, parsed once (bounded) for every decision after this one.
        info = parse_request(
            body.buffered, request.headers, config.balancer.prefix.session_header, rt.wants_blocks
        )
        if router.needs_model and info.model is None:  # say why, or find it past the bounds
            lookup = find_model(body.buffered)
            ctx.model_undecided = lookup.undecided
            if lookup.undecided is not None:
                rt.metrics.model_undecided.labels(lookup.undecided).inc()
            if lookup.undecided == "too_deep":  # no backend parses this either
                return error_response(400, "bad_request", "request body nests too deep", rid)
            if lookup.model is not None:
                info = dataclasses.replace(info, model=lookup.model)
        ctx.model = info.model  # tokens: the answer's model when the backend names none
        # -- tenants: who it is for, its class, its rate limits (401 / 429) -------------------
        gate = rt.tenant_gate
        admitted = await gate.admit(request.headers, info, rt.clock())
        if isinstance(admitted, Refusal):
            return error_response(
                admitted.status,
                admitted.kind,
                admitted.message,
                rid,
                admitted.headers,
                admitted.code,
            )
        ctx.admitted = admitted
        # -- end tenants ---------------------------------------------------------------------
        ctx.exchange = exchange = open_exchange(
            rt, request.method, request.path, request.headers, info, rt.clock()
        )
        ticket = exchange.ticket  # tenants: what the fair pending queue orders by
        ticket.tenant, ticket.priority = admitted.tenant.name, admitted.priority
        ticket.cost = admitted.cost
        try:
            if admitted.priority is Priority.SHEDDABLE and self._backends_report_pressure(
                exchange.group
            ):
                raise Shed(Failure.OVERLOADED)
            with self.deadlines.after(config.timeouts.total):  # the route's timeout
                # cache hook (1 of 2): one lookup before forwarding; a hit is replayed
                ctx.cache = await rt.cache.lookup(
                    exchange.route,
                    request.method,
                    request.raw_path,
                    request.headers,
                    body.buffered,
                    admitted.tenant.name,
                    config.timeouts.total,
                )
                if ctx.cache is not None and ctx.cache.entry is not None:
                    ctx.status, ctx.response_started = ctx.cache.entry.status, True
                    headers = {config.headers.request_id: rid, CACHE_HEADER: "hit"}
                    return await replay(request, ctx.cache.entry, headers)
                return await self._forward(ctx)
        except TimeoutError:
            if ctx.response_started:
                abort(request)
                return web.Response(status=ctx.status)  # never sent; the connection is closed
            return failure_response(Failure.ROUTE_TIMEOUT, rid)
        except Shed as shed:
            rt.metrics.shed.labels(exchange.route.name, shed.failure.value).inc()
            rt.metrics.shed_by_priority.labels(admitted.priority.label, shed.failure.value).inc()
            message = consequence(shed.failure).message
            if shed.failure is Failure.NO_BACKEND:
                message = f"no healthy backend available for group {exchange.group!r}"
            return shed_response(message, rid, rt.capacity.retry_after_s())
        except BodyTooLarge:
            return failure_response(Failure.BODY_TOO_LARGE, rid)
        finally:
            if ctx.cache is not None:
                ctx.cache.close()  # followers still waiting on this request go on alone
            # tenants: correct the token charge from the answer's usage
            await gate.settle(admitted, ctx.response_started, ctx.answer, rt.clock())

    def _backends_report_pressure(self, group: str) -> bool:
        """Tenants: does every candidate report more queued than a sheddable request may meet
        (``admission.sheddable_queue_depth``), or its KV cache nearly full
        (``admission.sheddable_kv_usage``: such a backend queues or preempts new work)?"""
        admission = self.runtime.config.admission
        depth, kv = admission.sheddable_queue_depth, admission.sheddable_kv_usage
        if depth <= 0 and kv <= 0:
            return False
        now = self.runtime.clock()
        candidates, _ = self.runtime.fleet.candidates(group, now)
        return bool(candidates) and all(
            (depth > 0 and e.signals.queue_depth(now) > depth)
            or (kv > 0 and e.signals.kv_usage(now) >= kv)
            for e in candidates
        )

    async def _forward(self, ctx: RequestContext) -> web.StreamResponse:
        exchange = ctx.exchange
        assert exchange is not None
        try:  # the first try runs bare: most requests never need the retry machinery
            return await self._try_once(ctx)
        except RetryableTry:
            pass  # _try_once already had the core allow the retry and spend the budget
        rng = self.runtime.rng
        retrying = AsyncRetrying(
            stop=stop_after_attempt(ctx.config.retries.attempts - 1),
            wait=lambda _: exchange.backoff_s(rng),
            before=_back_off_first(exchange, rng),
            retry=retry_if_exception_type(RetryableTry),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._try_once(ctx)
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def _try_once(self, ctx: RequestContext) -> web.StreamResponse:
        """One try (and its hedge, when the core says so): admit, send, and relay or raise
        RetryableTry."""
        body, exchange = ctx.body, ctx.exchange
        assert body is not None and exchange is not None
        endpoint = await acquire(ctx, exchange)
        ctx.backend = endpoint.name
        first = start_try(ctx, endpoint)
        # which hedge delay applies (time to head, or to first token): the one parse says
        delay_s = exchange.hedge_delay_s(exchange.request.stream, body.buffered is not None)
        if delay_s is not None:
            return await hedged(ctx, first, delay_s)
        with first.attempt:
            return await answer_try(ctx, first, send(ctx, first, read_ahead=False))

    def _finish(self, ctx: RequestContext, response: web.StreamResponse | None) -> None:
        request, config = ctx.request, ctx.config
        rt = self.runtime
        status = response.status if response is not None else 499  # client went away
        if response is not None and not ctx.response_started:
            response.headers.setdefault(config.headers.request_id, ctx.request_id)
        elapsed = rt.clock() - ctx.started_at
        route = ctx.route_name
        rt.metrics.requests_for(route, ctx.backend, str(status)).inc()
        rt.metrics.request_duration_for(route).observe(elapsed)
        trace_id = "-"
        if ctx.trace is not None:  # tracing
            ctx.trace.end(status, route, ctx.backend)
            trace_id = ctx.trace.trace_id
        if config.logging.access_log:
            self.access_log.write(
                AccessEntry(
                    ctx.request_id,
                    request.method,
                    request.path,
                    route,
                    ctx.backend,
                    status,
                    round(elapsed * 1000, 3),
                    ctx.tries,
                    trace_id,
                    ctx.failure.value if ctx.failure is not None else None,
                    ctx.model_undecided or None,
                    ctx.stream_break,
                )
            )


def _back_off_first(
    exchange: Exchange, rng: random.Random
) -> Callable[[RetryCallState], Awaitable[None]]:
    """tenacity waits only between its own attempts; the retries here follow a first try made
    outside it, so the first of them backs off too, by the core's same rule."""

    async def before(retry_state: RetryCallState) -> None:
        if retry_state.attempt_number == 1:
            await asyncio.sleep(exchange.backoff_s(rng))

    return before
