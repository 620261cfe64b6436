"""The request path's I/O: read the request, send tries, wait in the queue, relay the answer.

Every decision (route, group, admission, pick, what a failure means, whether to retry) is made
by the pure core in ``gateway.exchange`` / ``gateway.capacity`` / ``gateway.failures``; this
module only performs what it decides, around aiohttp and the pooled upstream client:

    client -> open_exchange (route, group) -> admit (capacity: pick, queue or shed)
           -> try (proxy.send) -> Exchange.retry (tenacity drives the loop) -> relay the answer
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
from collections.abc import Awaitable, Callable
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
from gateway.request_parse import parse_request
from gateway.resume import (
    Transcript,
    continuation_body,
    is_opening_role_only,
    read_to_first_token,
    without_opening_role,
)
from gateway.routing import find_model
from gateway.runtime import Runtime
from gateway.tenants import Admitted, Refusal
from gateway.token_metrics import record_answer
from gateway.tracing import RequestTrace
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
    failure: Failure | None = None  # what broke a response already under way
    stream_break: str | None = None  # how a body that broke after its first byte ended

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
        endpoint = await self._acquire(exchange)
        ctx.backend = endpoint.name
        first = self._start_try(ctx, endpoint)
        # which hedge delay applies (time to head, or to first token): the one parse says
        delay_s = exchange.hedge_delay_s(exchange.request.stream, body.buffered is not None)
        if delay_s is not None:
            return await self._hedged(ctx, first, delay_s)
        with first.attempt:
            try:
                head = await self._send(ctx, first, read_ahead=False)
            except UpstreamFailure as failure:
                return self._failed_try(ctx, first.attempt, failure.failure)
            except BodyTooLarge:
                first.attempt.failed(Failure.BODY_TOO_LARGE)
                raise
            return await self._answer(ctx, first, head)

    async def _send(
        self, ctx: RequestContext, one: _Try, read_ahead: bool, body: RequestBody | None = None
    ) -> _Head:
        """Send one try (``body``, else the client's) and wait for its response head; with
        ``read_ahead``, for a stream also its first token (what a streamed try is hedged on)."""
        rt, request, config = self.runtime, ctx.request, ctx.config
        body = body if body is not None else ctx.body
        assert body is not None and rt.upstream is not None
        url = one.endpoint.url
        headers = proxy.upstream_headers(
            request, ctx.request_id, config.headers.request_id, url, config.headers.trusted_proxies
        )
        # tenants: the client's key stays here unless configured; a backend's own key replaces it
        auth = rt.tenant_gate.upstream_authorization(
            request.headers.get("Authorization"), one.endpoint.name
        )
        headers.popall("Authorization", None)
        if auth is not None:
            headers["Authorization"] = auth
        if one.attempt.span is not None:  # tracing: this try's own span id goes upstream
            one.attempt.span.stamp(headers)
        timeouts = config.timeouts
        try:
            upstream = await proxy.send(
                rt.upstream, request, url, headers, body, timeouts.connect, timeouts.per_try
            )
        finally:  # the time spent waiting for the client's body is the client's
            one.attempt.client_waited(body.take_client_wait_s())
        try:
            streaming = upstream.content_type == "text/event-stream"
            reported = upstream.headers.get(config.balancer.queue_depth.header)
            one.attempt.got_headers(upstream.status, streaming, reported)
            first_chunk = b""
            if read_ahead and streaming and upstream.status < 300:
                try:
                    first_chunk = await read_to_first_token(upstream)
                except UpstreamError as exc:  # nothing relayed yet: still a clean failure
                    raise UpstreamFailure(Failure.RESET, str(exc)[:200]) from None
                if not is_opening_role_only(first_chunk):  # else the relay's next one is
                    one.attempt.got_first_body_byte()
        except BaseException:
            upstream.close()
            raise
        return _Head(upstream, first_chunk)

    def _failed_try(
        self, ctx: RequestContext, att: Attempt, failure: Failure
    ) -> web.StreamResponse:
        """A try that got no response: retried (RetryableTry) or answered from the table."""
        att.failed(failure)
        if consequence(failure).client_fault:  # a slow or broken body: not the backend's
            return self._client_failure(ctx, failure)
        if self._may_retry(ctx, failure):
            raise RetryableTry() from None
        return _failure_response(failure, ctx.request_id)

    async def _answer(self, ctx: RequestContext, one: _Try, head: _Head) -> web.StreamResponse:
        """A try with a response head: retried if its status says so, else relayed."""
        upstream = head.upstream
        try:
            if self._may_retry(ctx, upstream.status):
                raise RetryableTry()
            return await self._relay(ctx, upstream, one.attempt, one.endpoint, head.first_chunk)
        finally:
            upstream.release()

    # -- hedging -------------------------------------------------------------------------------

    async def _hedged(self, ctx: RequestContext, first: _Try, delay_s: float) -> web.StreamResponse:
        """Race the try against one hedge sent after ``delay_s`` without an answer; relay the
        first good answer. Every other try is cancelled at once: its upstream connection is
        closed (the backend sees the disconnect) and its in-flight count drops."""
        tries = [first]
        self._launch(ctx, first)
        try:
            winner = await self._race(ctx, tries, delay_s)
        except BaseException:  # the client left or the route timed out while racing
            for one in tries:
                _cancel(one, Failure.CLIENT_GONE)
            raise
        ctx.backend = winner.endpoint.name
        with contextlib.ExitStack() as stack:
            stack.push(winner.attempt)  # begun at launch; ends (recorded once) on the way out
            assert winner.task is not None
            try:
                head = winner.task.result()
            except UpstreamFailure as failure:
                return self._failed_try(ctx, winner.attempt, failure.failure)
            except BodyTooLarge:
                winner.attempt.failed(Failure.BODY_TOO_LARGE)
                raise
            return await self._answer(ctx, winner, head)

    def _launch(self, ctx: RequestContext, one: _Try) -> None:
        one.attempt.begin()
        one.task = asyncio.create_task(self._send(ctx, one, read_ahead=True))

    async def _race(self, ctx: RequestContext, tries: list[_Try], delay_s: float) -> _Try:
        """The try that answers first (a failure while another try is still out does not
        count: that one may still answer); at most one hedge, after ``delay_s``."""
        exchange = ctx.exchange
        assert exchange is not None
        metrics, route = self.runtime.metrics, exchange.route.name
        in_flight = {one.task: one for one in tries if one.task is not None}
        timeout_s: float | None = delay_s
        while True:
            done, _ = await asyncio.wait(
                in_flight, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # no answer within the delay: hedge once, then wait for either
                timeout_s = None
                endpoint = exchange.hedge(self.runtime.clock())
                if endpoint is not None:
                    hedge = self._start_try(ctx, endpoint, is_hedge=True)
                    self._launch(ctx, hedge)
                    assert hedge.task is not None
                    tries.append(hedge)
                    in_flight[hedge.task] = hedge
                    metrics.hedges.labels(route, "sent").inc()
                    if ctx.trace is not None:  # tracing
                        ctx.trace.event("hedge", {"backend": endpoint.name})
                continue
            for task in done:
                one = in_flight.pop(task)
                if in_flight and self._answered_badly(ctx, one):
                    tries.remove(one)
                    continue
                for loser in in_flight.values():
                    outrun = one.is_hedge and not loser.is_hedge
                    _cancel(loser, Failure.OUTRUN if outrun else Failure.HEDGE_LOST)
                    tries.remove(loser)
                    metrics.hedges.labels(route, "cancelled").inc()
                if one.is_hedge:
                    metrics.hedges.labels(route, "won").inc()
                return one

    def _answered_badly(self, ctx: RequestContext, one: _Try) -> bool:
        """Did this finished try fail (no response, or a status ``retry_on`` names)? If so
        its outcome is recorded now and the other try in flight is waited for."""
        assert one.task is not None
        exc = one.task.exception()
        if exc is None:
            status = one.task.result().upstream.status
            if status < 500 or status not in ctx.config.retries.retry_on:
                return False
            one.task.result().upstream.close()
        elif isinstance(exc, UpstreamFailure):
            one.attempt.failed(exc.failure)
        else:
            return False  # BodyTooLarge and the like are the request's: answer them
        one.attempt.end()
        return True

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
        first_chunk: bytes = b"",
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
        source: ChunkSource = _Prepended(first_chunk, upstream) if first_chunk else upstream
        if ctx.cache is not None:  # cache hook (2 of 2): the verdict, and the answer recorded
            response.headers[CACHE_HEADER] = ctx.cache.verdict
            source = ctx.cache.capture(upstream.status, upstream.headers, source)
        streaming = upstream.content_type == "text/event-stream"
        try:
            await response.prepare(request)
            ctx.response_started = True
            transcript = None
            if streaming and self._resumable(ctx):
                transcript = Transcript(ctx.config.retries.buffer_limit)
            relay = _Relay(response, observer, transcript)
            await self._stream_body(ctx, relay, source, streaming, att, endpoint)
            if transcript is not None and ctx.failure is None:
                self._answer_relayed(ctx, transcript)
        except ConnectionError:  # the client left (aiohttp's reset error is one too)
            att.failed(Failure.CLIENT_GONE)
            upstream.close()
        finally:
            if observer is not None:  # tokens: what the relayed answer showed
                report = ctx.answer = observer.finish(self.runtime.clock())  # (and tenants)
                broken = ctx.failure is not None  # the stream broke and was not resumed
                record_answer(self.runtime.metrics, endpoint.name, report, config.slo, broken)
        return response

    async def _stream_body(
        self,
        ctx: RequestContext,
        relay: _Relay,
        upstream: ChunkSource,
        streaming: bool,
        att: Attempt,
        endpoint: Endpoint,
        continuation: bool = False,
    ) -> None:
        """Relay body chunks as they arrive (an event stream whole events at a time, when it
        could be resumed). A stream's first chunk that is not only the chat opening event (the
        role, sent before prefill) is its time to first token (see
        :meth:`Attempt.got_first_body_byte`). An upstream break after the first byte resumes
        an event stream on another backend where it can (``gateway.resume``), else ends it
        with an OpenAI-shaped error event and a clean end (the client's SDK raises on it; a
        cut chunked encoding looks like a network fault); any other response is cut off, so
        it is never mistaken for a whole one."""
        while True:
            try:
                chunk = await upstream.readany()
            except UpstreamError as exc:
                att.failed(Failure.BROKEN_RESPONSE)
                att.end()  # the dead try leaves the in-flight count now, not after the resume
                log.warning("upstream %s broke off mid-response: %s", endpoint.name, exc)
                await self._after_break(ctx, relay, streaming)
                return
            if not chunk:
                break
            if att.first_body_at is None and not is_opening_role_only(chunk):
                att.got_first_body_byte()  # a stream's first token, once
            if relay.transcript is not None:
                chunk = relay.transcript.feed(chunk)
            if continuation and chunk:
                chunk, continuation = without_opening_role(chunk), False
            await relay.write(chunk, self.runtime.clock)
        if relay.transcript is not None:
            await relay.write(relay.transcript.flush(), self.runtime.clock)
        await relay.response.write_eof()

    async def _after_break(self, ctx: RequestContext, relay: _Relay, streaming: bool) -> None:
        """A response broke after its first byte: resume it, end it with an error event, or
        (not an event stream) cut the client off."""
        response, transcript = relay.response, relay.transcript
        if not streaming:
            ctx.failure = Failure.BROKEN_RESPONSE
            self._count_break(ctx, "cut")
            _abort(ctx.request)
            return
        if transcript is not None and await self._resume(ctx, relay, transcript):
            return
        ctx.failure = Failure.BROKEN_RESPONSE
        self._count_break(ctx, "error_event")
        await response.write(sse_error_event(Failure.BROKEN_RESPONSE))
        await response.write_eof()

    def _count_break(self, ctx: RequestContext, result: str) -> None:
        """A body broke after its first byte: the metric, and the access log's
        ``stream_break`` (a resumed stream is a success to the client, not to the backend)."""
        ctx.stream_break = result
        self.runtime.metrics.broken_streams.labels(ctx.route_name, result).inc()

    def _answer_relayed(self, ctx: RequestContext, transcript: Transcript) -> None:
        """A stream ended whole: tell the policy what the backend that finished it (after a
        resume, the continuation's) now holds, when the request's prompt was hashed for it."""
        exchange = ctx.exchange
        assert exchange is not None
        request = exchange.request
        if not request.blocks or transcript.overflowed:
            return
        text, _, finished = transcript.streamed()
        if finished and text:
            self.runtime.answer_relayed(exchange.group, ctx.backend, request, text)

    def _resumable(self, ctx: RequestContext) -> bool:
        exchange, body = ctx.exchange, ctx.body
        assert exchange is not None and body is not None
        return exchange.resendable and body.buffered is not None

    async def _resume(self, ctx: RequestContext, relay: _Relay, transcript: Transcript) -> bool:
        """Continue a broken event stream on another backend and splice it into the client's
        (True), or say it cannot be continued (False: nothing more was written)."""
        exchange, body = ctx.exchange, ctx.body
        assert exchange is not None and body is not None and body.buffered is not None
        text, tokens, finished = transcript.streamed()
        if finished:  # it broke after the answer was complete: end it as it would have
            await relay.write(transcript.flush(), self.runtime.clock)
            await relay.response.write_eof()
            self._count_break(ctx, "finished")
            return True
        continued = continuation_body(body.buffered, text, tokens)
        if transcript.overflowed or continued is None:
            return False
        if not exchange.may_resume(True, self.runtime.clock()):
            return False
        self.runtime.metrics.retries.labels(ctx.route_name, Failure.BROKEN_RESPONSE.value).inc()
        try:
            endpoint = await self._acquire(exchange)
        except Shed:
            return False
        one = self._start_try(ctx, endpoint)
        with one.attempt:
            try:
                head = await self._send(
                    ctx, one, False, RequestBody.of_bytes(ctx.request, continued)
                )
            except UpstreamFailure as failure:
                one.attempt.failed(failure.failure)
                return False
            upstream = head.upstream
            try:
                if upstream.status != 200 or upstream.content_type != "text/event-stream":
                    return False
                ctx.backend = endpoint.name
                self._count_break(ctx, "resumed")
                try:
                    await self._stream_body(ctx, relay, upstream, True, one.attempt, endpoint, True)
                except ConnectionError:  # the client left during the continuation
                    one.attempt.failed(Failure.CLIENT_GONE)
                    upstream.close()
                    raise
                return True
            finally:
                upstream.release()

    def _start_try(self, ctx: RequestContext, endpoint: Endpoint, is_hedge: bool = False) -> _Try:
        """A try at ``endpoint`` as the core starts it, with its span when tracing."""
        exchange = ctx.exchange
        assert exchange is not None
        attempt = exchange.start_try(endpoint)
        if ctx.trace is not None:  # tracing: ended with the try's outcome (Attempt.end)
            attempt.span = ctx.trace.start_try(endpoint.name, exchange.tries, attempt)
        return _Try(endpoint, attempt, is_hedge=is_hedge)

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
                        "error": ctx.failure.value if ctx.failure is not None else None,
                        **({"stream_break": ctx.stream_break} if ctx.stream_break else {}),
                        **({"model_undecided": ctx.model_undecided} if ctx.model_undecided else {}),
                    },
                    separators=(",", ":"),
                )
            )


@dataclass(eq=False)
class _Try:
    """One try in flight: its backend, its Attempt and (when raced) the task sending it."""

    endpoint: Endpoint
    attempt: Attempt
    is_hedge: bool = False
    task: asyncio.Task[_Head] | None = None


@dataclass
class _Head:
    """A try's response head, with a stream's first body chunk when it was read ahead."""

    upstream: UpstreamResponse
    first_chunk: bytes = b""


class _Prepended:
    """A response body whose first chunk was read ahead (to decide a hedge race): that chunk,
    then the rest as it arrives."""

    __slots__ = ("_first", "_rest")

    def __init__(self, first: bytes, rest: ChunkSource) -> None:
        self._first = first
        self._rest = rest

    async def readany(self) -> bytes:
        if self._first:
            first, self._first = self._first, b""
            return first
        return await self._rest.readany()


@dataclass
class _Relay:
    """Where a relayed body goes: the client's response, the token observer that reads each
    chunk after it went out, and the transcript a broken stream is resumed from."""

    response: web.StreamResponse
    observer: AnswerObserver | None
    transcript: Transcript | None

    async def write(self, chunk: bytes, clock: Callable[[], float]) -> None:
        if not chunk:
            return
        arrived_at = clock() if self.observer is not None else 0.0
        await self.response.write(chunk)
        if self.observer is not None:
            self.observer.feed(chunk, arrived_at)


def _cancel(one: _Try, failure: Failure) -> None:
    """Abandon a try at once: its connection closes (the send task's cancellation fails the
    exchange, or an answer that arrived meanwhile is closed) and its Attempt ends now."""
    task = one.task
    if task is not None:
        task.add_done_callback(_close_answer)
        task.cancel()
    one.attempt.failed(failure)
    one.attempt.end()


def _close_answer(task: asyncio.Task[_Head]) -> None:
    if task.cancelled():
        return
    if task.exception() is None:
        task.result().upstream.close()


def sse_error_event(failure: Failure) -> bytes:
    """An event-stream error event in the OpenAI error shape (the openai client raises an
    APIError on it), then the stream's end marker."""
    rule = consequence(failure)
    error = {"error": {"message": rule.message, "type": rule.error_type, "code": rule.status}}
    return b"data: " + json.dumps(error).encode() + b"\n\ndata: [DONE]\n\n"


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
    streamed = content_type == "text/event-stream"
    return AnswerObserver(streamed, ctx.started_at, ctx.model)  # the model: from RequestInfo


def _abort(request: web.BaseRequest) -> None:
    """Close the client connection so a cut-off response is never mistaken for a whole one."""
    transport = request.transport
    if transport is not None:
        transport.abort()  # not close(): a client that stopped reading would keep it open
