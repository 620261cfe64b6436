"""The public HTTP listener: aiohttp's low-level server with a proxy's defences.

aiohttp alone answers malformed requests with a text/plain 400 (and logs a traceback for each),
and has no deadline for a client that trickles its request headers (slowloris). This listener
answers every protocol-level error with the gateway's JSON error (400, 414 for an over-long
request line, 431 for over-large headers), logs it as one line, and closes a connection whose
request headers do not complete within ``timeouts.request_header`` of their first byte with
408. A request line in a version other than HTTP/1.0 or 1.1 is marked for a 505 (see
``gateway/framing.py``) and answered as HTTP/1.1, never in the version the client made up.
The admin listeners use the same protocol through :class:`GatewayAppRunner`.

Only aiohttp's public API is used (a test keeps it so): the server is built with
``web.Server(handler, request_factory=..., **kwargs)``; the header deadline runs on what the
protocol sees (bytes arriving) and what the server sees (aiohttp asks the request factory for a
request once a head is parsed; the handler returns once it is answered), never on aiohttp's
internal connection state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from gateway.errors import error_body, raw_error

log = logging.getLogger("tailgate")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
RequestFactory = Callable[
    [
        RawRequestMessage,
        StreamReader,
        web.RequestHandler,
        AbstractStreamWriter,
        "asyncio.Task[None]",
    ],
    web.BaseRequest,
]

# Set on a request whose request line named a version other than HTTP/1.0 or HTTP/1.1.
UNSUPPORTED_VERSION = web.RequestKey("unsupported_http_version", HttpVersion)
_SUPPORTED_VERSIONS = frozenset({HttpVersion10, HttpVersion11})


def _classify(
    exc: BaseException | None, message: str | None, request_line_bytes: int
) -> tuple[int, str, str]:
    text = str(message or exc or "malformed request")
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if isinstance(limit, int) and request_line_bytes > limit:
            return 414, "uri_too_long", "request line too long"
        return 431, "headers_too_large", "request header fields too large"
    if isinstance(exc, BadHttpMessage) and "too many headers" in text.lower():
        return 431, "headers_too_large", "too many request header fields"
    return 400, "bad_request", "malformed HTTP request"


class GatewayProtocol(web.RequestHandler):
    """aiohttp's request handler with JSON protocol errors and a request-header deadline.

    The deadline is armed by the first byte that arrives while no request is open (handed to
    the handler and not yet answered) and disarmed when the next request is handed over; bytes
    arriving while a request is open are its body or pipelined requests, which wait their turn.
    """

    def __init__(
        self,
        server: GatewayServer,
        *,
        loop: asyncio.AbstractEventLoop,
        header_timeout_s: float,
        **protocol_options: Any,
    ) -> None:
        super().__init__(server, loop=loop, **protocol_options)
        self._event_loop = loop
        self._header_timeout_s = header_timeout_s
        self._header_deadline: asyncio.TimerHandle | None = None
        self._request_open = False  # handed to the handler, which has not returned yet
        self._in_request_line = False  # no line break yet since the request began
        self._request_line_bytes = 0  # its length so far: 414, not 431, when it is too long

    def data_received(self, data: bytes) -> None:
        if data and self._header_deadline is None and not self._request_open:
            self._in_request_line = True
            self._request_line_bytes = 0
            self._header_deadline = self._event_loop.call_later(
                self._header_timeout_s, self._header_overdue
            )
        if self._in_request_line:
            end = data.find(b"\n")
            self._request_line_bytes += len(data) if end < 0 else end
            self._in_request_line = end < 0
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def request_started(self) -> None:
        """aiohttp parsed a request head (or a protocol error) and hands it over now."""
        self._request_open = True
        self._disarm_header_deadline()

    def request_answered(self) -> None:
        """The handler returned: bytes from now on begin the next request."""
        self._request_open = False

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_overdue(self) -> None:
        self._header_deadline = None
        transport = self.transport
        if transport is None:
            return
        if self.writing_paused:
            # The last answer is still waiting for the client to read it, so a head that came
            # behind it (pipelined) cannot have been handed over yet: give it another period.
            self._header_deadline = self._event_loop.call_later(
                self._header_timeout_s, self._header_overdue
            )
            return
        message = "request headers not received in time"
        log.info("closed a connection from %s: %s", self._peer(), message)
        transport.write(raw_error(408, "Request Timeout", "request_timeout", message))
        self.force_close()  # closes the transport (after the 408 is flushed) and forgets it

    def _peer(self) -> str:
        transport = self.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else "-"

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 500:
            self.log_exception("unhandled error serving a request", exc_info=exc)
            code, kind, text = 500, "internal_error", "internal gateway error"
        else:
            code, kind, text = _classify(exc, message, self._request_line_bytes)
            log.info("rejected a malformed request from %s: %d %s", self._peer(), code, text)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        response = web.Response(
            status=code,
            body=error_body(kind, text),
            content_type="application/json",
            headers={"Connection": "close", "X-Tailgate-Error": kind},
        )
        response.force_close()
        return response


def _answers_tracked(handler: Handler) -> Handler:
    """``handler``, telling its connection when it has returned (so the header deadline of the
    next request starts from that request's own first byte)."""

    async def tracked(request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            protocol = request.protocol
            if isinstance(protocol, GatewayProtocol):
                protocol.request_answered()

    return tracked


class GatewayServer(web.Server):
    """An aiohttp low-level server that builds :class:`GatewayProtocol` connections.

    ``protocol_options`` are aiohttp's documented ``RequestHandler`` options
    (``keepalive_timeout``, ``max_line_size``, ``access_log``...); ``request_factory`` builds
    each request (an application's, for the admin listeners) and defaults to a plain one."""

    def __init__(
        self,
        handler: Handler,
        *,
        header_timeout_s: float,
        request_factory: RequestFactory | None = None,
        handler_cancellation: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
        **protocol_options: Any,
    ) -> None:
        event_loop = loop or asyncio.get_running_loop()
        super().__init__(
            _answers_tracked(handler),
            request_factory=self._build_request,
            handler_cancellation=handler_cancellation,
            loop=event_loop,
            **protocol_options,
        )
        self._event_loop = event_loop
        self._header_timeout_s = header_timeout_s
        self._protocol_options = protocol_options
        self._make_app_request = request_factory

    def _build_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        """The request, answered as HTTP/1.1 if its version is one the gateway refuses."""
        if isinstance(protocol, GatewayProtocol):
            protocol.request_started()
        sent_version = message.version
        unsupported = sent_version not in _SUPPORTED_VERSIONS
        if unsupported:
            # RawRequestMessage is a NamedTuple: _replace is its public copy-with method.
            message = message._replace(version=HttpVersion11, should_close=True)
        if self._make_app_request is not None:
            request = self._make_app_request(message, payload, protocol, writer, task)
        else:
            request = web.BaseRequest(message, payload, protocol, writer, task, self._event_loop)
        if unsupported:
            request[UNSUPPORTED_VERSION] = sent_version
        return request

    def __call__(self) -> GatewayProtocol:
        return GatewayProtocol(
            self,
            loop=self._event_loop,
            header_timeout_s=self._header_timeout_s,
            **self._protocol_options,
        )


class GatewayAppRunner(web.ServerRunner):
    """Serves a :class:`aiohttp.web.Application` on :class:`GatewayProtocol` connections, so
    the admin listeners give the same JSON protocol errors (and no tracebacks) as the public one.

    An inner ``web.AppRunner`` (which never listens) runs the application's startup, shutdown
    and cleanup, and lends its request handler and factory, read from the public
    ``AppRunner.server``; the connections are this runner's own :class:`GatewayServer`."""

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout_s: float,
        handle_signals: bool = False,
        shutdown_timeout: float = 60.0,
        **protocol_options: Any,
    ) -> None:
        self._app_runner = web.AppRunner(app, access_log=None)
        server = GatewayServer(
            self._handle_with_app,
            request_factory=self._request_from_app,
            header_timeout_s=header_timeout_s,
            **protocol_options,
        )
        super().__init__(server, handle_signals=handle_signals, shutdown_timeout=shutdown_timeout)

    @property
    def app(self) -> web.Application:
        return self._app_runner.app

    def _app_server(self) -> web.Server:
        server = self._app_runner.server
        if server is None:
            raise RuntimeError("GatewayAppRunner.setup() has not run")
        return server

    async def _handle_with_app(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._app_server().request_handler(request)

    def _request_from_app(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        return self._app_server().request_factory(message, payload, protocol, writer, task)

    async def setup(self) -> None:
        await self._app_runner.setup()  # the application's on_startup, then it is frozen
        await super().setup()

    async def shutdown(self) -> None:
        await self._app_runner.shutdown()  # on_shutdown, while open connections finish

    async def cleanup(self) -> None:
        await super().cleanup()
        await self.app.cleanup()  # on_cleanup, once no connection is left
