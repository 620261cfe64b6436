"""Continue an event stream that broke mid-answer on another backend, spliced into the
client's response (what to ask the next backend for is ``gateway.resume``'s pure part)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.failures import Failure
from gateway.proxy import RequestBody, UpstreamFailure
from gateway.request_context import Shed
from gateway.resume import Transcript, continuation_body
from gateway.tries import acquire, send, start_try

if TYPE_CHECKING:
    from gateway.relay import Relay


async def resume(relay: Relay, transcript: Transcript) -> bool:
    """Continue a broken event stream on another backend and splice it into the client's
    (True), or say it cannot be continued (False: nothing more was written)."""
    ctx = relay.ctx
    rt, exchange, body = ctx.runtime, ctx.exchange, ctx.body
    assert exchange is not None and body is not None and body.buffered is not None
    text, tokens, finished = transcript.streamed()
    if finished:  # it broke after the answer was complete: end it as it would have
        await relay.write(transcript.flush(), rt.clock)
        await relay.response.write_eof()
        ctx.count_break("finished")
        return True
    continued = continuation_body(body.buffered, text, tokens)
    if transcript.overflowed or continued is None:
        return False
    if not exchange.may_resume(True, rt.clock()):
        return False
    rt.metrics.retries.labels(ctx.route_name, Failure.BROKEN_RESPONSE.value).inc()
    try:
        endpoint = await acquire(ctx, exchange)
    except Shed:
        return False
    one = start_try(ctx, endpoint)
    with one.attempt:
        try:
            head = await send(ctx, one, False, RequestBody.of_bytes(ctx.request, continued))
        except UpstreamFailure as failure:
            one.attempt.failed(failure.failure)
            return False
        upstream = head.upstream
        try:
            if upstream.status != 200 or upstream.content_type != "text/event-stream":
                return False
            ctx.backend = endpoint.name
            ctx.count_break("resumed")
            try:
                await relay.stream(upstream, True, one.attempt, endpoint, True, watched=upstream)
            except ConnectionError:  # the client left during the continuation
                one.attempt.failed(Failure.CLIENT_GONE)
                upstream.close()
                raise
            return True
        finally:
            upstream.release()
