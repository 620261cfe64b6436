"""A lean, pooled HTTP/1.1 client for the forwarding path.

Why not aiohttp's ``ClientSession`` here: at saturation about 40% of the gateway's CPU went to
it (request and response objects, cookie, tracing, timeout and auto-header machinery that a
reverse proxy never uses). This client does only what the proxy needs: keep-alive connections
per origin with a cap and an idle timeout, the request head written in one call, the response
parsed by llhttp (``httptools``), and the body streamed with back-pressure both ways.
Health checks and metric scrapes keep using aiohttp; they are not on the hot path.

Errors are :class:`UpstreamConnectError` (never reached the upstream),
:class:`UpstreamTimeout` (no response head in time) and :class:`UpstreamClosed` (the
connection broke or the upstream spoke bad HTTP), so the caller can tell a safe resend from an
unsafe one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.deadline import SlotTimer, SlotTimers

_HIGH_WATER = 256 * 1024  # response bytes buffered before reading from the upstream pauses
_LOW_WATER = 64 * 1024
_SWEEP_EVERY_S = 1.0
_MAX_HEAD_BYTES = 64 * 1024  # a response head larger than this is refused, not buffered
_NO_BODY_EXPECTED = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})
# Answers that say the upstream's parser gave up on our request, maybe mid-body: whatever it
# did not read would be parsed as the next request, so the connection is never reused.
_FRAMING_IN_DOUBT = frozenset({400, 408, 411, 413, 414, 431})


class UpstreamError(Exception):
    """Base of the client's errors."""


class UpstreamConnectError(UpstreamError):
    """Could not open a connection (refused, unreachable, DNS, TLS, connect timeout)."""


class UpstreamTimeout(UpstreamError):
    """The response head did not arrive within the deadline."""


class UpstreamClosed(UpstreamError):
    """The connection broke, or the upstream sent something that is not valid HTTP/1.1."""


class UpstreamStalled(UpstreamError):
    """The response body went silent for longer than its watch allows (see
    :meth:`UpstreamResponse.watch_silence`): the connection is dropped."""


@dataclass(frozen=True)
class Origin:
    """Where connections go: one pool per origin."""

    scheme: str
    host: str
    port: int
    path_prefix: str  # a backend URL may carry a base path; the request path is appended

    @classmethod
    def of(cls, url: URL) -> Origin:
        prefix = url.raw_path.rstrip("/")
        return cls(url.scheme, url.raw_host or "", url.explicit_port or url.port or 80, prefix)


class _Connection(asyncio.Protocol):
    """One upstream connection: carries one exchange at a time."""

    def __init__(self, pool: _OriginPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = True  # counts against the origin's cap until closed
        self.idle_since = 0.0
        self.request_sent = True  # False while a streamed request body is still going out
        self.awaiting_client = False  # the body writer is waiting for the client's next bytes
        self.writer: asyncio.Task[None] | None = None
        self._head_timer: SlotTimer | None = None
        self._head_timeout_s = 0.0
        self._head_deferred = False
        self._parser: httptools.HttpResponseParser | None = None  # None between exchanges
        # The last exchange's parser, reused by the next one: after a whole message llhttp is
        # ready for the next, and a new parser per exchange was ~1.5% of a request's samples.
        self._spare_parser: httptools.HttpResponseParser | None = None
        self._response: UpstreamResponse | None = None
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._reason = b""
        self._head_only = False
        self._write_paused: asyncio.Future[None] | None = None

    # -- the exchange -------------------------------------------------------------------------

    def begin(self, head_only: bool) -> asyncio.Future[UpstreamResponse]:
        self._parser = self._spare_parser or httptools.HttpResponseParser(self)
        self._spare_parser = None
        self._raw_headers = []
        self._head_bytes = 0
        self._reason = b""
        self._head_only = head_only
        self._response = None
        self._head_deferred = False
        self._head = self._pool.loop.create_future()
        return self._head

    def arm_head_deadline(self, deadline: float, head_timeout_s: float) -> None:
        self._head_timeout_s = head_timeout_s
        self._head_timer = self._pool.client.timers.call_at(deadline, self.head_overdue)

    def disarm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    @property
    def answered(self) -> bool:
        """Has the response head of the current exchange arrived?"""
        return self._response is not None

    def head_overdue(self) -> None:
        """The head deadline passed: fail the exchange unless the head made it just in time.

        While the body writer waits for the client's next bytes, the time is the client's, not
        the upstream's (the request body's own deadlines bound it): the deadline is put off
        and runs its full length again from the moment the body is all sent.
        """
        self._head_timer = None
        if self._head is None or self._head.done():
            return
        if self.awaiting_client:
            self._head_deferred = True
            return
        self.fail(UpstreamTimeout("no response head in time"))

    def body_sent(self) -> None:
        self.request_sent = True
        if self._head_deferred and not self.closed:
            self._head_deferred = False
            timers, loop = self._pool.client.timers, self._pool.loop
            self._head_timer = timers.call_at(loop.time() + self._head_timeout_s, self.head_overdue)

    def fail(self, exc: BaseException) -> None:
        """End the exchange with ``exc`` and drop the connection."""
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        if self._response is not None:
            self._response._fail(exc)
        self.close()

    def close(self) -> None:
        if self.writer is not None and not self.writer.done():
            self.writer.cancel()
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
        self._pool.forget(self)  # frees its place under the cap at once

    async def drain(self) -> None:
        if self._write_paused is not None:
            await asyncio.shield(self._write_paused)
        if self.closed:
            raise UpstreamClosed("connection closed while sending the request")

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            self.fail(UpstreamClosed("upstream sent data outside an exchange"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            reason = exc.__context__  # a callback's own verdict, wrapped by the parser
            if isinstance(reason, UpstreamClosed):
                self.fail(reason)
            else:
                self.fail(UpstreamClosed(f"invalid HTTP response: {exc}"))
        except httptools.HttpParserUpgrade:
            self.fail(UpstreamClosed("upstream switched protocols"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.writer is not None and not self.writer.done():
            self.writer.cancel()
        self._pool.forget(self)
        if self._write_paused is not None and not self._write_paused.done():
            self._write_paused.set_result(None)
        response = self._response
        if response is not None and response.reads_until_close and not response.complete:
            response._finish()  # the body was delimited by the close itself
        elif (self._head is not None and not self._head.done()) or (
            response is not None and not response.complete
        ):
            detail = f": {exc}" if exc else ""
            self.fail(UpstreamClosed(f"upstream closed the connection{detail}"))

    def pause_writing(self) -> None:
        self._write_paused = self._pool.loop.create_future()

    def resume_writing(self) -> None:
        if self._write_paused is not None and not self._write_paused.done():
            self._write_paused.set_result(None)
        self._write_paused = None

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._parser is None or (self._response is not None and self._response.complete):
            # More bytes after the answer (a HEAD body, or an answer to nothing asked):
            # this connection's framing cannot be trusted any more.
            self.close()

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > _MAX_HEAD_BYTES:
            raise UpstreamClosed(f"response head over {_MAX_HEAD_BYTES} bytes")
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        if parser is None or self._head is None or self._head.done():
            return  # bytes after the exchange; on_message_begin already closed the connection
        status = parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (e.g. 100 Continue): the real one follows
            self._raw_headers = []
            self._head_bytes = 0
            self._reason = b""
            return
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in self._raw_headers:
            headers.add(
                name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")
            )
        response = UpstreamResponse(
            self, status, self._reason.decode("utf-8", "replace"), CIMultiDictProxy(headers)
        )
        response.reads_until_close = (
            not self._head_only
            and status not in (204, 304)
            and "Content-Length" not in headers
            and "Transfer-Encoding" not in headers
        )
        response.keep_alive = parser.should_keep_alive() and not response.reads_until_close
        self._response = response
        if self._head_only:
            response._finish()
            self._parser = None  # anything more is not part of this exchange
        if not self._head.done():
            self._head.set_result(response)

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is not None and not response.complete:
            response._feed(body)

    def on_message_complete(self) -> None:
        response = self._response
        if response is None or response.complete:
            return  # the end of an interim (1xx) answer, or of a HEAD answer
        self._spare_parser, self._parser = self._parser, None
        response._finish()

    # -- flow control for the response body ---------------------------------------------------

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()


class UpstreamResponse:
    """The response head, plus its body as a stream (``readany``) that must be released."""

    __slots__ = (
        "_allowed_gap_s",
        "_buffered",
        "_chunks",
        "_conn",
        "_content_type",
        "_error",
        "_idle_s",
        "_last_at",
        "_paused",
        "_released",
        "_silence_timer",
        "_waiter",
        "complete",
        "headers",
        "keep_alive",
        "reads_until_close",
        "reason",
        "status",
    )

    def __init__(
        self, conn: _Connection, status: int, reason: str, headers: CIMultiDictProxy[str]
    ) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.complete = False
        self.keep_alive = False
        self.reads_until_close = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False
        self._content_type: str | None = None
        self._silence_timer: SlotTimer | None = None  # see watch_silence
        self._allowed_gap_s = 0.0
        self._idle_s = 0.0
        self._last_at = 0.0

    @property
    def content_type(self) -> str:
        """The media type, lower case, without parameters (aiohttp's default when absent);
        worked out once (the try, the relay and the token observer each ask)."""
        if self._content_type is None:
            value = self.headers.get("Content-Type")
            self._content_type = (
                value.partition(";")[0].strip().lower() if value else "application/octet-stream"
            )
        return self._content_type

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    async def readany(self) -> bytes:
        """The body bytes that have arrived (waiting for some); ``b""`` at the end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            self._waiter = self._conn._pool.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self._conn.resume_reading()
        return data

    # -- the silence watch ---------------------------------------------------------------------

    def watch_silence(self, first_gap_s: float, idle_s: float) -> None:
        """Fail the body (:class:`UpstreamStalled`, the connection dropped) once the upstream
        goes silent: ``first_gap_s`` from the head until :meth:`answering` (an event stream's
        first token comes after the prefill, which the head and a chat stream's opening event
        precede), ``idle_s`` between any two chunks after it. A hung backend otherwise holds
        a started answer until the route deadline. Silence while the body waits for the
        client to read it (the socket paused, chunks unread) is the client's, never counted.
        One slot timer per response, re-armed only when it fires: a chunk costs a clock read;
        a body already whole (most small answers by the time their head is read) arms none."""
        if self.complete:
            return
        self._allowed_gap_s, self._idle_s = first_gap_s, idle_s
        self._last_at = self._conn._pool.loop.time()
        self._arm_silence(self._last_at + first_gap_s)

    def answering(self) -> None:
        """The answer has begun (a stream's first token): from now on ``idle_s`` applies."""
        if self._allowed_gap_s == self._idle_s:
            return  # already answering (called per chunk of a body that is not a stream)
        self._allowed_gap_s = self._idle_s
        if self._silence_timer is not None:  # armed for the first gap: bring it forward
            self._silence_timer.cancel()
            self._arm_silence(self._last_at + self._idle_s)

    def _arm_silence(self, when: float) -> None:
        self._silence_timer = self._conn._pool.client.timers.call_at(when, self._check_silence)

    def _check_silence(self) -> None:
        self._silence_timer = None
        if self.complete or self._released or self._error is not None:
            return
        now = self._conn._pool.loop.time()
        if self._paused or self._chunks:  # waiting on the client's reads, not the upstream
            self._last_at = now
        allowed_s = self._allowed_gap_s
        silent_s = now - self._last_at
        if silent_s < allowed_s:
            self._arm_silence(self._last_at + allowed_s)
            return
        self._conn.fail(UpstreamStalled(f"no response bytes for {silent_s:.1f} s"))

    def _stop_watch(self) -> None:
        if self._silence_timer is not None:
            self._silence_timer.cancel()
            self._silence_timer = None

    def release(self) -> None:
        """Done with this response: the connection goes back to the pool if it is clean."""
        self._stop_watch()
        if self._released:
            return
        self._released = True
        conn = self._conn
        if (
            self.complete
            and self.keep_alive
            and conn.request_sent
            and not conn.closed
            and self.status not in _FRAMING_IN_DOUBT
        ):
            conn._pool.give_back(conn)
        else:
            conn.close()

    def close(self) -> None:
        self._stop_watch()
        if not self._released:
            self._released = True
            self._conn.close()

    # -- fed by the connection ----------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._silence_timer is not None:
            self._last_at = self._conn._pool.loop.time()
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._paused:
            self._paused = True
            self._conn.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._stop_watch()
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self.complete:
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _OriginPool:
    """The connections to one origin: idle ones (most recent first) and a cap on all of them."""

    def __init__(self, origin: Origin, client: UpstreamClient) -> None:
        self.origin = origin
        self.client = client
        self.loop = client.loop
        self.idle: collections.deque[_Connection] = collections.deque()
        self.open = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self, connect_timeout_s: float, deadline: float) -> _Connection:
        """A connection: an idle one, a new one, or (at the cap) the next one freed."""
        while True:
            while self.idle:
                conn = self.idle.pop()
                if conn.closed:
                    continue
                if self.loop.time() - conn.idle_since < self.client.idle_timeout_s:
                    return conn
                conn.close()  # too old to trust between sweeps: the backend may be closing it
            left = deadline - self.loop.time()
            if self.open < self.client.max_per_origin:
                return await self._connect(min(connect_timeout_s, max(left, 0.0)))
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                async with asyncio.timeout(left):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass on the wake-up this waiter was given
                else:
                    waiter.cancel()
                    with contextlib.suppress(ValueError):  # a wake-up may have skipped it
                        self.waiters.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise UpstreamTimeout("no upstream connection freed up in time") from None
                raise

    async def _connect(self, connect_timeout_s: float) -> _Connection:
        self.open += 1
        conn = _Connection(self)
        origin = self.origin
        context = self.client.ssl_context if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(connect_timeout_s):
                await self.loop.create_connection(
                    lambda: conn, origin.host, origin.port, ssl=context
                )
        except BaseException as exc:
            conn.closed = True
            self.forget(conn)
            if isinstance(exc, TimeoutError):
                raise UpstreamConnectError("connect timeout") from None
            if isinstance(exc, (OSError, ssl.SSLError)):
                raise UpstreamConnectError(str(exc) or type(exc).__name__) from None
            raise
        return conn

    def give_back(self, conn: _Connection) -> None:
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        self._wake_one()

    def forget(self, conn: _Connection) -> None:
        """``conn`` closed: it no longer counts against the cap (counted once)."""
        if not conn.counted:
            return
        conn.counted = False
        with contextlib.suppress(ValueError):  # not idle: it was in use
            self.idle.remove(conn)
        self.open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def sweep(self, now: float, idle_timeout_s: float) -> None:
        while self.idle and now - self.idle[0].idle_since >= idle_timeout_s:
            self.idle.popleft().close()  # connection_lost then forgets it

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class UpstreamClient:
    """Pooled keep-alive HTTP/1.1 to the backends; one per gateway process."""

    def __init__(self, max_per_origin: int, idle_timeout_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.max_per_origin = max_per_origin
        self.idle_timeout_s = idle_timeout_s
        self.ssl_context = ssl.create_default_context()
        self._pools: dict[URL, _OriginPool] = {}
        self.timers = SlotTimers()  # response head deadlines (gateway.deadline)
        self._sweeper = self.loop.call_later(_SWEEP_EVERY_S, self._sweep)
        self._closed = False

    def _pool(self, base: URL) -> _OriginPool:
        pool = self._pools.get(base)
        if pool is None:
            pool = self._pools[base] = _OriginPool(Origin.of(base), self)
        return pool

    async def request(
        self,
        method: str,
        base: URL,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterator[bytes] | None,
        body_length: int | None,
        connect_timeout_s: float,
        head_timeout_s: float,
    ) -> UpstreamResponse:
        """Send one request to ``base`` + ``target`` (path and query, already encoded) and
        return once the response head has arrived; the body is read from the response.

        The framing is this client's: ``headers`` must carry no Content-Length or
        Transfer-Encoding. A streamed ``body`` goes out with ``body_length`` as its length
        when the client declared one, else chunked, except for a method that does not expect
        a body (GET, DELETE ...): many servers read no chunked body there and would parse it
        as the next request on the connection, so that body is collected first (the caller
        bounds its size) and sent with a length.
        """
        if self._closed:
            raise UpstreamConnectError("client closed")
        payload = b"" if body is None else body
        if not isinstance(payload, bytes) and body_length is None and method in _NO_BODY_EXPECTED:
            payload = b"".join([chunk async for chunk in payload])
        if isinstance(payload, bytes):
            if payload or method not in _NO_BODY_EXPECTED:
                headers["Content-Length"] = str(len(payload))
        elif body_length is not None:
            headers["Content-Length"] = str(body_length)
        else:
            headers["Transfer-Encoding"] = "chunked"
        pool = self._pool(base)
        head = _request_head(method, pool.origin.path_prefix + target, headers)
        deadline = self.loop.time() + head_timeout_s
        conn = await pool.acquire(connect_timeout_s, deadline)
        head_future = conn.begin(head_only=method == "HEAD")
        assert conn.transport is not None
        if isinstance(payload, bytes):
            conn.request_sent = True
            conn.transport.write(head + payload if payload else head)
        else:
            conn.request_sent = False
            conn.transport.write(head)
            conn.writer = self.loop.create_task(
                _send_body(conn, payload, chunked=body_length is None)
            )
        conn.arm_head_deadline(deadline, head_timeout_s)
        try:
            return await head_future
        except BaseException:
            conn.fail(UpstreamClosed("exchange abandoned"))
            raise
        finally:
            conn.disarm_head_deadline()

    def _sweep(self) -> None:
        now = self.loop.time()
        for pool in self._pools.values():
            pool.sweep(now, self.idle_timeout_s)
        if not self._closed:
            self._sweeper = self.loop.call_later(_SWEEP_EVERY_S, self._sweep)

    def retain(self, bases: set[URL]) -> None:
        """Backends left the fleet: close the idle connections to every other base URL (busy
        ones finish their exchange first)."""
        for base in [base for base in self._pools if base not in bases]:
            self._pools.pop(base).close()

    async def close(self) -> None:
        self._closed = True
        self._sweeper.cancel()
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


async def _send_body(conn: _Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
    """Stream the request body; a failure of the body's source ends the exchange with it."""
    transport = conn.transport
    assert transport is not None
    try:
        conn.awaiting_client = True
        async for chunk in body:
            conn.awaiting_client = False
            if chunk:
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                await conn.drain()
            conn.awaiting_client = True
        conn.awaiting_client = False
        if chunked:
            transport.write(b"0\r\n\r\n")
        conn.body_sent()
    except asyncio.CancelledError:
        conn.close()  # the exchange was given up; the connection is half-written
    except UpstreamClosed:
        pass  # the connection already failed the exchange
    except Exception as exc:
        # E.g. the client's body broke off or grew past the size limit: before the answer
        # started that is the exchange's outcome; after it, the answer is cut off.
        conn.fail(UpstreamClosed(f"request body failed: {exc}") if conn.answered else exc)


def _request_head(method: str, target: str, headers: CIMultiDict[str]) -> bytes:
    """The request line and header block, refused if a field carries a line break (request
    smuggling). ``": ".join`` over the pairs is C all the way, 40% less than a comprehension
    of f-strings; a head with no fields keeps its one blank line."""
    fields = "\r\n".join(map(": ".join, headers.items()))
    if fields:
        text = f"{method} {target} HTTP/1.1\r\n{fields}\r\n\r\n"
        breaks = len(headers) + 2  # the request line's, one per field, the blank line's
    else:
        text, breaks = f"{method} {target} HTTP/1.1\r\n\r\n", 2
    if text.count("\n") != breaks or text.count("\r") != breaks:
        raise UpstreamClosed("refusing a request head with a line break inside a field")
    return text.encode("utf-8", "surrogateescape")
