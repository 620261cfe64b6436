"""A hedged try: race the first try against one hedge sent after the group's delay without
an answer, relay the first good answer, and cancel every other try at once (its upstream
connection is closed, so the backend sees the disconnect, and its in-flight count drops).
When to hedge and where is the core's decision (``Exchange.hedge_delay_s``, ``hedge``)."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from gateway.failures import Failure
from gateway.proxy import UpstreamFailure
from gateway.relay import answer_try
from gateway.request_context import RequestContext
from gateway.tries import Head, Try, send, start_try


async def hedged(ctx: RequestContext, first: Try, delay_s: float) -> web.StreamResponse:
    """Race ``first`` against one hedge sent after ``delay_s`` without an answer; relay the
    first good answer."""
    tries = [first]
    _launch(ctx, first)
    try:
        winner = await _race(ctx, tries, delay_s)
    except BaseException:  # the client left or the route timed out while racing
        for one in tries:
            _cancel(one, Failure.CLIENT_GONE)
        raise
    ctx.backend = winner.endpoint.name
    with contextlib.ExitStack() as stack:
        stack.push(winner.attempt)  # begun at launch; ends (recorded once) on the way out
        assert winner.task is not None
        return await answer_try(ctx, winner, winner.task)  # done: its head or its failure


def _launch(ctx: RequestContext, one: Try) -> None:
    one.attempt.begin()
    one.task = asyncio.create_task(send(ctx, one, read_ahead=True))


async def _race(ctx: RequestContext, tries: list[Try], delay_s: float) -> Try:
    """The try that answers first (a failure while another try is still out does not count:
    that one may still answer); at most one hedge, after ``delay_s``."""
    exchange = ctx.exchange
    assert exchange is not None
    metrics, route = ctx.runtime.metrics, exchange.route.name
    in_flight = {one.task: one for one in tries if one.task is not None}
    timeout_s: float | None = delay_s
    while True:
        done, _ = await asyncio.wait(
            in_flight, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:  # no answer within the delay: hedge once, then wait for either
            timeout_s = None
            endpoint = exchange.hedge(ctx.runtime.clock())
            if endpoint is not None:
                hedge = start_try(ctx, endpoint, is_hedge=True)
                _launch(ctx, hedge)
                assert hedge.task is not None
                tries.append(hedge)
                in_flight[hedge.task] = hedge
                metrics.hedges.labels(route, "sent").inc()
                if ctx.trace is not None:  # tracing
                    ctx.trace.event("hedge", {"backend": endpoint.name})
            continue
        for task in done:
            one = in_flight.pop(task)
            if in_flight and _answered_badly(ctx, one):
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


def _answered_badly(ctx: RequestContext, one: Try) -> bool:
    """Did this finished try fail (no response, or a status ``retry_on`` names)? If so its
    outcome is recorded now and the other try in flight is waited for."""
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


def _cancel(one: Try, failure: Failure) -> None:
    """Abandon a try at once: its connection closes (the send task's cancellation fails the
    exchange, or an answer that arrived meanwhile is closed) and its Attempt ends now."""
    task = one.task
    if task is not None:
        task.add_done_callback(_close_answer)
        task.cancel()
    one.attempt.failed(failure)
    one.attempt.end()


def _close_answer(task: asyncio.Task[Head]) -> None:
    if task.cancelled():
        return
    if task.exception() is None:
        task.result().upstream.close()
