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
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from gateway import proxy
from gateway.attempt import Attempt
from gateway.config.model import GatewayConfig
from gateway.endpoint import Endpoint
from gateway.errors import error_response, shed_response
from gateway.exchange import Exchange, RetryVerdict, open_exchange
from gateway.failures import Failure, consequence
from gateway.headers import header_bytes, request_id_from
from gateway.proxy import BodyTooLarge, RequestBody, UpstreamFailure
from gateway.request_parse import parse_request
from gateway.runtime import Runtime
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
        response: web.StreamResponse | None = None
        try:
            response = await self._handle(ctx)
            return response
        finally:
            self._finish(ctx, response)

    async def _handle(self, ctx: RequestContext) -> web.StreamResponse:
        request, config, rid = ctx.request, ctx.config, ctx.request_id
        rt = self.runtime
        if header_bytes(request.headers) > config.limits.max_header_size:
            return error_response(431, "headers_too_large", "request headers too large", rid)
        length = request.content_length
        if length is not None and length > config.limits.max_body:
            return _failure_response(Failure.BODY_TOO_LARGE, rid)
        ctx.body = body = RequestBody(request, config.limits.max_body)
        try:
            await body.buffer_if_small(config.retries.buffer_limit)
        except (aiohttp.ClientPayloadError, ConnectionError):
            return _failure_response(Failure.CLIENT_BODY, rid)
        info = parse_request(
            body.buffered, request.headers, config.balancer.prefix.session_header, rt.wants_blocks
        )
        ctx.exchange = exchange = open_exchange(
            rt, request.method, request.path, request.headers, info, rt.clock()
        )
        try:
            async with asyncio.timeout(config.timeouts.total):
                return await self._forward(ctx)
        except TimeoutError:
            if ctx.response_started:
                _abort(request)
                return web.Response(status=ctx.status)  # never sent; the connection is closed
            return _failure_response(Failure.ROUTE_TIMEOUT, rid)
        except Shed as shed:
            rt.metrics.shed.labels(exchange.route.name, shed.failure.value).inc()
            message = consequence(shed.failure).message
            if shed.failure is Failure.NO_BACKEND:
                message = f"no healthy backend available for group {exchange.group!r}"
            return shed_response(message, rid, rt.capacity.retry_after_s())
        except BodyTooLarge:
            return _failure_response(Failure.BODY_TOO_LARGE, rid)

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
            request, ctx.request_id, config.headers.request_id, endpoint.url
        )
        with exchange.start_try(endpoint) as att:
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
                att.failed(failure.failure)
                if self._may_retry(ctx, failure.failure):
                    raise RetryableTry() from None
                return _failure_response(failure.failure, ctx.request_id)
            except BodyTooLarge:
                att.failed(Failure.BODY_TOO_LARGE)
                raise
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
        try:
            await response.prepare(request)
            ctx.response_started = True
            await self._stream_body(request, response, upstream, att, endpoint)
        except ConnectionError:  # the client left (aiohttp's reset error is one too)
            att.failed(Failure.CLIENT_GONE)
            upstream.close()
        return response

    async def _stream_body(
        self,
        request: web.BaseRequest,
        response: web.StreamResponse,
        upstream: UpstreamResponse,
        att: Attempt,
        endpoint: Endpoint,
    ) -> None:
        """Relay body chunks as they arrive; an upstream break cuts the client off too. A
        stream's first chunk is its time to first token (see Attempt.got_first_event)."""
        awaiting_first_event = att.streaming
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
            if awaiting_first_event:
                att.got_first_event()
                awaiting_first_event = False
            await response.write(chunk)
        await response.write_eof()

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


def _abort(request: web.BaseRequest) -> None:
    """Close the client connection so a cut-off response is never mistaken for a whole one."""
    transport = request.transport
    if transport is not None:
        transport.close()
