"""Relay an upstream answer to the client: its head, then its body chunk by chunk as it
arrives, with the token observer reading along and, for an event stream that could be
resumed, the transcript ``gateway.relay_resume`` continues it from after a break."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from gateway import proxy
from gateway.attempt import Attempt
from gateway.cache import CACHE_HEADER, ChunkSource
from gateway.endpoint import Endpoint
from gateway.failures import Failure, consequence
from gateway.llm_stream import AnswerObserver
from gateway.proxy import BodyTooLarge, UpstreamFailure
from gateway.relay_resume import resume
from gateway.request_context import RequestContext, RetryableTry, abort
from gateway.resume import Transcript, is_opening_role_only, without_opening_role
from gateway.token_metrics import record_answer
from gateway.tries import Head, Try, failed_try, may_retry
from gateway.upstream import UpstreamError, UpstreamResponse

log = logging.getLogger("tailgate")

_ANSWER_TYPES = frozenset({"application/json", "text/event-stream"})


async def answer_try(ctx: RequestContext, one: Try, head_of: Awaitable[Head]) -> web.StreamResponse:
    """``one``'s head once it comes, answered (:func:`answer`); a try that got none is
    answered or retried as its failure says (``failed_try``). The unhedged try and a hedge
    race's winner both end here."""
    try:
        head = await head_of
    except UpstreamFailure as failure:
        return failed_try(ctx, one.attempt, failure.failure)
    except BodyTooLarge:
        one.attempt.failed(Failure.BODY_TOO_LARGE)
        raise
    return await answer(ctx, one, head)


async def answer(ctx: RequestContext, one: Try, head: Head) -> web.StreamResponse:
    """A try with a response head: retried if its status says so, else relayed."""
    upstream = head.upstream
    try:
        if may_retry(ctx, upstream.status):
            raise RetryableTry()
        return await relay(ctx, upstream, one.attempt, one.endpoint, head.first_chunk)
    finally:
        upstream.release()


async def relay(
    ctx: RequestContext,
    upstream: UpstreamResponse,
    att: Attempt,
    endpoint: Endpoint,
    first_chunk: bytes = b"",
) -> web.StreamResponse:
    """Stream the upstream response to the client chunk by chunk, as it arrives."""
    request, config, rt = ctx.request, ctx.config, ctx.runtime
    headers = proxy.response_headers(upstream, config.headers.request_id)
    headers.append((config.headers.request_id, ctx.request_id))
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if config.headers.expose_backend:
        label = endpoint.name if config.headers.expose_backend_address else endpoint.public_name
        response.headers["X-Tailgate-Backend"] = label
    if upstream.content_length is not None and "Transfer-Encoding" not in upstream.headers:
        response.content_length = upstream.content_length
    ctx.status = upstream.status
    if rt.draining:
        response.force_close()
    observer = _answer_observer(ctx, upstream)  # tokens
    source: ChunkSource = Prepended(first_chunk, upstream) if first_chunk else upstream
    if ctx.cache is not None:  # cache hook (2 of 2): the verdict, and the answer recorded
        response.headers[CACHE_HEADER] = ctx.cache.verdict
        source = ctx.cache.capture(upstream.status, upstream.headers, source)
    streaming = upstream.content_type == "text/event-stream"
    try:
        await response.prepare(request)
        ctx.response_started = True
        transcript = None
        if streaming and _resumable(ctx):
            transcript = Transcript(config.retries.buffer_limit)
        out = Relay(ctx, response, observer, transcript)
        await out.stream(source, streaming, att, endpoint, watched=upstream)
        if transcript is not None and ctx.failure is None:
            _answer_relayed(ctx, transcript)
    except ConnectionError:  # the client left (aiohttp's reset error is one too)
        att.failed(Failure.CLIENT_GONE)
        upstream.close()
    finally:
        if observer is not None:  # tokens: what the relayed answer showed
            report = ctx.answer = observer.finish(rt.clock())  # (and tenants)
            broken = ctx.failure is not None  # the stream broke and was not resumed
            record_answer(rt.metrics, endpoint.name, report, config.slo, broken)
    return response


@dataclass(slots=True)
class Relay:
    """Where a relayed body goes: the client's response, the token observer that reads each
    chunk after it went out, and the transcript a broken stream is resumed from."""

    ctx: RequestContext
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

    async def stream(
        self,
        upstream: ChunkSource,
        streaming: bool,
        att: Attempt,
        endpoint: Endpoint,
        continuation: bool = False,
        watched: UpstreamResponse | None = None,
    ) -> None:
        """Relay body chunks as they arrive (an event stream whole events at a time, when it
        could be resumed). A stream's first chunk that is not only the chat opening event (the
        role, sent before prefill) is its time to first token (see
        :meth:`Attempt.got_first_body_byte`). An upstream break after the first byte resumes
        an event stream on another backend where it can (``gateway.relay_resume``), else ends
        it with an OpenAI-shaped error event and a clean end (the client's SDK raises on it; a
        cut chunked encoding looks like a network fault); any other response is cut off, so
        it is never mistaken for a whole one. A backend that goes silent (``watched``'s
        silence watch: ``timeouts.per_try`` to the first token, ``timeouts.stream_idle``
        after it) is such a break."""
        clock = self.ctx.runtime.clock
        while True:
            try:
                chunk = await upstream.readany()
            except UpstreamError as exc:
                att.failed(Failure.BROKEN_RESPONSE)
                att.end()  # the dead try leaves the in-flight count now, not after the resume
                log.warning("upstream %s broke off mid-response: %s", endpoint.name, exc)
                await self._after_break(streaming)
                return
            if not chunk:
                break
            if att.first_body_at is None and not is_opening_role_only(chunk):
                att.got_first_body_byte()  # a stream's first token, once
                if watched is not None:
                    watched.answering()
            if self.transcript is not None:
                chunk = self.transcript.feed(chunk)
            if continuation and chunk:
                chunk, continuation = without_opening_role(chunk), False
            await self.write(chunk, clock)
        if self.transcript is not None:
            await self.write(self.transcript.flush(), clock)
        await self.response.write_eof()

    async def _after_break(self, streaming: bool) -> None:
        """A response broke after its first byte: resume it, end it with an error event, or
        (not an event stream) cut the client off."""
        ctx = self.ctx
        if not streaming:
            ctx.failure = Failure.BROKEN_RESPONSE
            ctx.count_break("cut")
            abort(ctx.request)
            return
        if self.transcript is not None and await resume(self, self.transcript):
            return
        ctx.failure = Failure.BROKEN_RESPONSE
        ctx.count_break("error_event")
        await self.response.write(sse_error_event(Failure.BROKEN_RESPONSE))
        await self.response.write_eof()


class Prepended:
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


def sse_error_event(failure: Failure) -> bytes:
    """An event-stream error event in the OpenAI error shape (the openai client raises an
    APIError on it), then the stream's end marker."""
    rule = consequence(failure)
    error = {"error": {"message": rule.message, "type": rule.error_type, "code": rule.status}}
    return b"data: " + json.dumps(error).encode() + b"\n\ndata: [DONE]\n\n"


def _answer_relayed(ctx: RequestContext, transcript: Transcript) -> None:
    """A stream ended whole: tell the policy what the backend that finished it (after a
    resume, the continuation's) now holds, when the request's prompt was hashed for it."""
    exchange = ctx.exchange
    assert exchange is not None
    request = exchange.request
    if not request.blocks or transcript.overflowed:
        return
    text, _, finished = transcript.streamed()
    if finished and text:
        ctx.runtime.answer_relayed(exchange.group, ctx.backend, request, text)


def _resumable(ctx: RequestContext) -> bool:
    exchange, body = ctx.exchange, ctx.body
    assert exchange is not None and body is not None
    return exchange.resendable and body.buffered is not None


def _answer_observer(ctx: RequestContext, upstream: UpstreamResponse) -> AnswerObserver | None:
    """Tokens: an observer for what may be an OpenAI-style answer (a successful POST answered
    with JSON or a stream), else None."""
    content_type = upstream.content_type
    if ctx.request.method != "POST" or upstream.status != 200 or content_type not in _ANSWER_TYPES:
        return None
    streamed = content_type == "text/event-stream"
    return AnswerObserver(streamed, ctx.started_at, ctx.model)  # the model: from RequestInfo
