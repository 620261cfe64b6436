"""The request path's I/O: read the request, send tries, wait in the queue, relay the answer.

Every decision (route, group, admission, pick, what a failure means, whether to retry) is made
by the pure core in ``gateway.exchange`` / ``gateway.capacity`` / ``gateway.failures``; this
module only performs what it decides, around aiohttp and the pooled upstream client:

    client -> open_exchange (route, group) -> admit (capacity: pick, queue or shed)
           -> try (proxy.send) -> Exchange.retry (tenacity drives the loop) -> relay the answer
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from aiohttp import web
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from gateway import proxy
from gateway.attempt import Attempt
from gateway.cache import CACHE_HEADER, ChunkSource, Lookup, replay
from gateway.config.model import GatewayConfig
from gateway.endpoint import Endpoint
from gateway.errors import error_response, shed_response
from gateway.exchange import Exchange, RetryVerdict, open_exchange
from gateway.failures import Failure, consequence
from gateway.framing import local_answer
from gateway.headers import header_bytes, request_id_from
from gateway.listener import UNSUPPORTED_VERSION
from gateway.llm_stream import AnswerObserver, AnswerReport
from gateway.pending_queue import Priority
from gateway.proxy import BodyTooLarge, RequestBody, UpstreamFailure
from gateway.request_info import NO_INFO, RequestInfo
from gateway.routing import find_model
from gateway.runtime import Runtime
from gateway.tenants import Admitted, Refusal
from gateway.token_metrics import record_answer
from gateway.tracing import RequestTrace, TrySpan
from gateway.upstream import UpstreamError, UpstreamResponse

access_log = logging.getLogger("tailgate.access")
log = logging.getLogger("tailgate")


class Shed(Exception):
    """The gateway will not send this request anywhere (503 with Retry-After)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.value)
        self.failure = failure


class RetryableTry(Exception):
    """This try failed in a way that will be retried on another backend."""


@dataclass
class RequestContext:
    """One client request on its way through the gateway: what it is and what became of it."""

    request: web.BaseRequest
    config: GatewayConfig  # one config for the whole request, even if a reload lands meanwhile
    request_id: str
    started_at: float
    exchange: Exchange | None = None
    body: RequestBody | None = None
    backend: str = "-"
    status: int = 0
    response_started: bool = False
    trace: RequestTrace | None = None  # None when tracing is off
    model: str | None = None  # the request body's "model", when it was read
    model_undecided: str | None = None  # why routing could not read the body's model
    cache: Lookup | None = None  # None: the cache is off for this request's route
    admitted: Admitted | None = None  # tenants: tenant, class, token charge
    answer: AnswerReport | None = None  # what the relayed answer showed (tokens)

    @property
    def route_name(self) -> str:
        return self.exchange.route.name if self.exchange is not None else "-"

    @property
    def tries(self) -> int:
        return self.exchange.tries if self.exchange is not None else 0


class ProxyHandler:
    """The aiohttp handler of the public listener."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        rt = self.runtime
        config = rt.config
        rid = request_id_from(request.headers, config.headers.request_id)
        ctx = RequestContext(request, config, rid, rt.clock())
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
        answer = local_answer(
            request.method, request.raw_path, request.path, UNSUPPORTED_VERSION not in request
        )
        if answer is not None:
            if answer.status >= 400:
                return error_response(
                    answer.status, answer.kind, answer.message, rid, answer.headers
                )
            return web.Response(status=answer.status, headers=answer.headers)
        if header_bytes(request.headers) > config.limits.max_header_size:
            return error_response(431, "headers_too_large", "request headers too large", rid)
        length = request.content_length
        if length is not None and length > config.limits.max_body:
            return _failure_response(Failure.BODY_TOO_LARGE, rid)
        timeouts, router = config.timeouts, rt.router
        ctx.body = body = RequestBody(
            request, config.limits.max_body, timeouts.request_body_idle, timeouts.request_body
        )
        try:  # routing on the body's model reads the whole body (up to max_body) first
            await body.buffer_if_small(
                config.limits.max_body if router.needs_model else config.retries.buffer_limit
            )
        except UpstreamFailure as failure:  # the client's body broke off or stalled
            return self._client_failure(ctx, failure.failure)
        except BodyTooLarge:
            return _failure_response(Failure.BODY_TOO_LARGE, rid)
        model = None
        if router.needs_model:
            lookup = find_model(body.buffered)
            model, ctx.model_undecided = lookup.model, lookup.undecided
            if lookup.undecided is not None:
                rt.metrics.model_undecided.labels(lookup.undecided).inc()
            if lookup.undecided == "too_deep":  # no backend parses this either
                return error_response(400, "bad_request", "request body nests too deep", rid)
        ctx.model = model  # tokens: the answer's model when the backend names none
        info = RequestInfo(model=model) if model is not None else NO_INFO
        # -- tenants: who it is for, its class, its rate limits (401 / 429) -------------------
        gate = rt.tenant_gate
        admitted = await gate.admit(request.headers, body.buffered, rt.clock())
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
            async with asyncio.timeout(config.timeouts.total):
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
                _abort(request)
                return web.Response(status=ctx.status)  # never sent; the connection is closed
            return _failure_response(Failure.ROUTE_TIMEOUT, rid)
        except Shed as shed:
            rt.metrics.shed.labels(exchange.route.name, shed.failure.value).inc()
            rt.metrics.shed_by_priority.labels(admitted.priority.label, shed.failure.value).inc()
            message = consequence(shed.failure).message
            if shed.failure is Failure.NO_BACKEND:
                message = f"no healthy backend available for group {exchange.group!r}"
            return shed_response(message, rid, rt.capacity.retry_after_s())
        except BodyTooLarge:
            return _failure_response(Failure.BODY_TOO_LARGE, rid)
        finally:
            if ctx.cache is not None:
                ctx.cache.close()  # followers still waiting on this request go on alone
            # tenants: correct the token charge from the answer's usage
            await gate.settle(admitted, ctx.response_started, ctx.answer, rt.clock())

    def _backends_report_pressure(self, group: str) -> bool:
        """Tenants: does every candidate report more queued than a sheddable request may meet
        (``admission.sheddable_queue_depth``)?"""
        threshold = self.runtime.config.admission.sheddable_queue_depth
        if threshold <= 0:
            return False
        now = self.runtime.clock()
        candidates, _ = self.runtime.fleet.candidates(group, now)
        return bool(candidates) and all(e.signals.queue_depth(now) > threshold for e in candidates)

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
        """One try: admit, send, and relay or raise RetryableTry."""
        rt, request, config = self.runtime, ctx.request, ctx.config
        body, exchange = ctx.body, ctx.exchange
        assert body is not None and exchange is not None and rt.upstream is not None
        endpoint = await self._acquire(exchange)
        ctx.backend = endpoint.name
        headers = proxy.upstream_headers(
            request,
            ctx.request_id,
            config.headers.request_id,
            endpoint.url,
            config.headers.trusted_proxies,
        )
        # tenants: the client's key stays here unless configured; a backend's own key replaces it
        auth = rt.tenant_gate.upstream_authorization(
            request.headers.get("Authorization"), endpoint.name
        )
        headers.popall("Authorization", None)
        if auth is not None:
            headers["Authorization"] = auth
        with (
            exchange.start_try(endpoint) as att,
            _try_span(ctx.trace, endpoint.name, exchange.tries, att) as span,  # tracing
        ):
            if span is not None:  # tracing: this try's own span id goes upstream
                span.stamp(headers)
            try:
                upstream = await proxy.send(
                    rt.upstream,
                    request,
                    endpoint.url,
                    headers,
                    body,
                    config.timeouts.connect,
                    config.timeouts.per_try,
                )
            except UpstreamFailure as failure:
                att.client_waited(body.take_client_wait_s())
                att.failed(failure.failure)
                if consequence(failure.failure).client_fault:  # slow or broken body
                    return self._client_failure(ctx, failure.failure)
                if self._may_retry(ctx, failure.failure):
                    raise RetryableTry() from None
                return _failure_response(failure.failure, ctx.request_id)
            except BodyTooLarge:
                att.failed(Failure.BODY_TOO_LARGE)
                raise
            att.client_waited(body.take_client_wait_s())  # the client's upload time is its own
            try:
                streaming = upstream.content_type == "text/event-stream"
                reported = upstream.headers.get(config.balancer.queue_depth.header)
                att.got_headers(upstream.status, streaming, reported)
                if self._may_retry(ctx, upstream.status):
                    raise RetryableTry()
                return await self._relay(ctx, upstream, att, endpoint)
            finally:
                upstream.release()

    def _may_retry(self, ctx: RequestContext, what: Failure | int) -> bool:
        """The core's retry verdict for this try, counted in the metrics."""
        exchange, body = ctx.exchange, ctx.body
        assert exchange is not None and body is not None
        if isinstance(what, int) and what < 500:
            return False  # the common case, decided before any lookup
        verdict = exchange.retry(what, body.replayable, self.runtime.clock())
        route = exchange.route.name
        if verdict is RetryVerdict.BUDGET_EXHAUSTED:
            self.runtime.metrics.retry_budget_exhausted.labels(route).inc()
            return False
        if verdict is RetryVerdict.RETRY:
            reason = what.value if isinstance(what, Failure) else str(what)
            self.runtime.metrics.retries.labels(route, reason).inc()
            if ctx.trace is not None:  # tracing
                ctx.trace.event("retry", {"reason": reason, "after_try": exchange.tries})
            return True
        return False

    async def _acquire(self, exchange: Exchange) -> Endpoint:
        """The backend for this try: at once, or after waiting in the pending queue; raises
        :class:`Shed` when the core sheds the request."""
        granted = exchange.admit(self.runtime.clock())
        if granted is None:
            granted = await self._wait_for_grant(exchange)
        if isinstance(granted, Failure):
            raise Shed(granted)
        return granted

    async def _wait_for_grant(self, exchange: Exchange) -> Endpoint | Failure:
        """Wait, queued, until the capacity module hands this request a slot or its deadline
        (measured from arrival) passes."""
        rt = self.runtime
        grant: asyncio.Future[Endpoint | Failure] = asyncio.get_running_loop().create_future()

        def deliver(result: Endpoint | Failure) -> None:
            if not grant.done():
                grant.set_result(result)

        exchange.ticket.on_grant = deliver
        rt.metrics.pending.inc()
        try:
            async with asyncio.timeout(rt.capacity.wait_left_s(exchange.ticket, rt.clock())):
                return await asyncio.shield(grant)
        except TimeoutError:
            shed = exchange.give_up_waiting()
            return shed if shed is not None else grant.result()  # else granted meanwhile
        except asyncio.CancelledError:  # the client left, or the route timeout fired
            if exchange.give_up_waiting() is None and grant.done():
                granted = grant.result()
                if isinstance(granted, Endpoint):  # hand the slot (and permit) straight back
                    with exchange.start_try(granted) as att:
                        att.failed(Failure.CLIENT_GONE)
            raise
        finally:
            exchange.ticket.on_grant = None
            rt.metrics.pending.dec()

    async def _relay(
        self,
        ctx: RequestContext,
        upstream: UpstreamResponse,
        att: Attempt,
        endpoint: Endpoint,
    ) -> web.StreamResponse:
        """Stream the upstream response to the client chunk by chunk, as it arrives."""
        request, config = ctx.request, ctx.config
        headers = proxy.response_headers(upstream)
        headers[config.headers.request_id] = ctx.request_id
        if config.headers.expose_backend:
            label = endpoint.name if config.headers.expose_backend_address else endpoint.public_name
            headers["X-Tailgate-Backend"] = label
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        if upstream.content_length is not None and "Transfer-Encoding" not in upstream.headers:
            response.content_length = upstream.content_length
        ctx.status = upstream.status
        if self.runtime.draining:
            response.force_close()
        observer = _answer_observer(ctx, upstream)  # tokens
        source: ChunkSource = upstream
        if ctx.cache is not None:  # cache hook (2 of 2): the verdict, and the answer recorded
            response.headers[CACHE_HEADER] = ctx.cache.verdict
            source = ctx.cache.capture(upstream.status, upstream.headers, upstream)
        try:
            await response.prepare(request)
            ctx.response_started = True
            await self._stream_body(request, response, source, att, endpoint, observer)
        except ConnectionError:  # the client left (aiohttp's reset error is one too)
            att.failed(Failure.CLIENT_GONE)
            upstream.close()
        finally:
            if observer is not None:  # tokens: what the relayed answer showed
                report = ctx.answer = observer.finish(self.runtime.clock())  # (and tenants)
                broken = att.failure is not None  # the upstream broke off mid-answer
                record_answer(self.runtime.metrics, endpoint.name, report, config.slo, broken)
        return response

    async def _stream_body(
        self,
        request: web.BaseRequest,
        response: web.StreamResponse,
        upstream: ChunkSource,
        att: Attempt,
        endpoint: Endpoint,
        observer: AnswerObserver | None,
    ) -> None:
        """Relay body chunks as they arrive; an upstream break cuts the client off too.

        The observer (tokens) reads each chunk only after it went out to the client."""
        clock = self.runtime.clock
        while True:
            try:
                chunk = await upstream.readany()
            except UpstreamError as exc:
                att.failed(Failure.BROKEN_RESPONSE)
                log.warning("upstream %s broke off mid-response: %s", endpoint.name, exc)
                _abort(request)
                return
            if not chunk:
                break
            arrived_at = clock() if observer is not None else 0.0
            await response.write(chunk)
            if observer is not None:
                observer.feed(chunk, arrived_at)
        await response.write_eof()

    def _client_failure(self, ctx: RequestContext, failure: Failure) -> web.Response:
        """The answer to a body the client broke off or stopped sending; the connection closes
        (its framing is lost)."""
        self.runtime.metrics.client_body_failures.labels(failure.value).inc()
        response = _failure_response(failure, ctx.request_id)
        response.force_close()
        return response

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
        if config.logging.access_log and access_log.isEnabledFor(logging.INFO):
            access_log.info(
                json.dumps(
                    {
                        "id": ctx.request_id,
                        "method": request.method,
                        "path": request.path,
                        "route": route,
                        "backend": ctx.backend,
                        "status": status,
                        "latency_ms": round(elapsed * 1000, 3),
                        "tries": ctx.tries,
                        "trace_id": trace_id,
                        **({"model_undecided": ctx.model_undecided} if ctx.model_undecided else {}),
                    },
                    separators=(",", ":"),
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


def _failure_response(failure: Failure, request_id: str) -> web.Response:
    """The client's answer to a failure, from the one table."""
    rule = consequence(failure)
    return error_response(rule.status, rule.error_type, rule.message, request_id)


_ANSWER_TYPES = frozenset({"application/json", "text/event-stream"})


def _answer_observer(ctx: RequestContext, upstream: UpstreamResponse) -> AnswerObserver | None:
    """Tokens: an observer for what may be an OpenAI-style answer (a successful POST answered
    with JSON or a stream), else None."""
    content_type = upstream.content_type
    if ctx.request.method != "POST" or upstream.status != 200 or content_type not in _ANSWER_TYPES:
        return None
    body = ctx.body.buffered if ctx.body is not None else None
    streamed = content_type == "text/event-stream"
    return AnswerObserver(streamed, ctx.started_at, ctx.model, body)


def _try_span(
    trace: RequestTrace | None, backend: str, number: int, att: Attempt
) -> AbstractContextManager[TrySpan | None]:
    """Tracing: the try's span, ended with the try's outcome (nothing when tracing is off)."""
    return nullcontext() if trace is None else trace.start_try(backend, number, att)


def _abort(request: web.BaseRequest) -> None:
    """Close the client connection so a cut-off response is never mistaken for a whole one."""
    transport = request.transport
    if transport is not None:
        transport.abort()  # not close(): a client that stopped reading would keep it open
