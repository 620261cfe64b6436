"""One try of a request at one backend: take a slot (at once or from the pending queue), send
the request, wait for the response head, and ask the core whether a failed try is retried.

Every decision is the pure core's (``gateway.exchange``, ``gateway.capacity``,
``gateway.failures``); these functions perform it around the pooled upstream client.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from gateway import proxy
from gateway.attempt import Attempt
from gateway.endpoint import Endpoint
from gateway.exchange import Exchange, RetryVerdict
from gateway.failures import Failure, consequence
from gateway.proxy import RequestBody, UpstreamFailure
from gateway.request_context import (
    RequestContext,
    RetryableTry,
    Shed,
    client_failure,
    failure_response,
)
from gateway.resume import is_opening_role_only, read_to_first_token
from gateway.upstream import UpstreamError, UpstreamResponse, UpstreamStalled


@dataclass(eq=False, slots=True)
class Try:
    """One try in flight: its backend, its Attempt and (when raced) the task sending it."""

    endpoint: Endpoint
    attempt: Attempt
    is_hedge: bool = False
    task: asyncio.Task[Head] | None = None


@dataclass(slots=True)
class Head:
    """A try's response head, with a stream's first body chunk when it was read ahead."""

    upstream: UpstreamResponse
    first_chunk: bytes = b""


async def acquire(ctx: RequestContext, exchange: Exchange) -> Endpoint:
    """The backend for this try: at once, or after waiting in the pending queue; raises
    :class:`Shed` when the core sheds the request."""
    granted = exchange.admit(ctx.runtime.clock())
    if granted is None:
        granted = await _wait_for_grant(ctx, exchange)
    if isinstance(granted, Failure):
        raise Shed(granted)
    return granted


async def _wait_for_grant(ctx: RequestContext, exchange: Exchange) -> Endpoint | Failure:
    """Wait, queued, until the capacity module hands this request a slot or its deadline
    (measured from arrival) passes."""
    rt = ctx.runtime
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


def start_try(ctx: RequestContext, endpoint: Endpoint, is_hedge: bool = False) -> Try:
    """A try at ``endpoint`` as the core starts it, with its span when tracing."""
    exchange = ctx.exchange
    assert exchange is not None
    attempt = exchange.start_try(endpoint)
    if ctx.trace is not None:  # tracing: ended with the try's outcome (Attempt.end)
        attempt.span = ctx.trace.start_try(endpoint.name, exchange.tries, attempt)
    return Try(endpoint, attempt, is_hedge=is_hedge)


async def send(
    ctx: RequestContext, one: Try, read_ahead: bool, body: RequestBody | None = None
) -> Head:
    """Send one try (``body``, else the client's) and wait for its response head; with
    ``read_ahead``, for a stream also its first token (what a streamed try is hedged on)."""
    rt, request, config = ctx.runtime, ctx.request, ctx.config
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
    if auth is not None:
        headers.add("Authorization", auth)
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
        # A hung backend must not hold a started answer: its first token within per_try of
        # the head, then never stream_idle without a byte (gateway.upstream's watch).
        upstream.watch_silence(timeouts.per_try, timeouts.stream_idle)
        first_chunk = b""
        if read_ahead and streaming and upstream.status < 300:
            try:
                first_chunk = await read_to_first_token(upstream)
            except UpstreamStalled:  # no first token within per_try: the try timed out
                raise UpstreamFailure(Failure.TIMEOUT, "no first token in time") from None
            except UpstreamError as exc:  # nothing relayed yet: still a clean failure
                raise UpstreamFailure(Failure.RESET, str(exc)[:200]) from None
            if not is_opening_role_only(first_chunk):  # else the relay's next one is
                one.attempt.got_first_body_byte()
                upstream.answering()
    except BaseException:
        upstream.close()
        raise
    return Head(upstream, first_chunk)


def may_retry(ctx: RequestContext, what: Failure | int) -> bool:
    """The core's retry verdict for this try, counted in the metrics."""
    exchange, body = ctx.exchange, ctx.body
    assert exchange is not None and body is not None
    if isinstance(what, int) and what < 500:
        return False  # the common case, decided before any lookup
    rt = ctx.runtime
    verdict = exchange.retry(what, body.replayable, rt.clock())
    route = exchange.route.name
    if verdict is RetryVerdict.BUDGET_EXHAUSTED:
        rt.metrics.retry_budget_exhausted.labels(route).inc()
        return False
    if verdict is RetryVerdict.RETRY:
        reason = what.value if isinstance(what, Failure) else str(what)
        rt.metrics.retries.labels(route, reason).inc()
        if ctx.trace is not None:  # tracing
            ctx.trace.event("retry", {"reason": reason, "after_try": exchange.tries})
        return True
    return False


def failed_try(ctx: RequestContext, att: Attempt, failure: Failure) -> web.StreamResponse:
    """A try that got no response: retried (RetryableTry) or answered from the table."""
    att.failed(failure)
    if consequence(failure).client_fault:  # a slow or broken body: not the backend's
        return client_failure(ctx, failure)
    if may_retry(ctx, failure):
        raise RetryableTry() from None
    return failure_response(failure, ctx.request_id)
