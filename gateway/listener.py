"""The public HTTP listener: aiohttp's low-level server with a proxy's defences.

aiohttp alone answers malformed requests with a text/plain 400 (and logs a traceback for each),
and has no deadline for a client that trickles its request headers (slowloris). This subclass
answers every protocol-level error with the gateway's JSON error (400, 414 for an over-long
request line, 431 for over-large headers), logs it as one line, and closes a connection whose
request headers do not complete within ``timeouts.request_header`` of their first byte with
408. A request line in a version other than HTTP/1.0 or 1.1 is marked for a 505 (see
``gateway/framing.py``) and answered as HTTP/1.1, never in the version the client made up.
The admin listener uses the same protocol through :class:`GatewayAppRunner`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from gateway.errors import error_body, raw_error

log = logging.getLogger("tailgate")

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


class GatewayProtocol(RequestHandler):
    """aiohttp's request handler with JSON protocol errors and a request-header deadline."""

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._header_deadline: asyncio.TimerHandle | None = None
        self._in_request_line = False  # no line break yet since the request began
        self._request_line_bytes = 0  # its length so far: 414, not 431, when it is too long

    def data_received(self, data: bytes) -> None:
        waiting_for_request = (
            not getattr(self, "_request_in_progress", False)
            and self._payload_parser is None
            and not self._messages
        )
        if waiting_for_request and data and self._header_deadline is None:
            self._in_request_line = True
            self._request_line_bytes = 0
            self._header_deadline = self._loop.call_later(
                self._header_timeout_s, self._header_timeout
            )
        if self._in_request_line:
            end = data.find(b"\n")
            self._request_line_bytes += len(data) if end < 0 else end
            self._in_request_line = end < 0
        super().data_received(data)
        if self._header_deadline is not None and (
            self._messages or getattr(self, "_request_in_progress", False)
        ):
            self._header_deadline.cancel()
            self._header_deadline = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        super().connection_lost(exc)

    def _header_timeout(self) -> None:
        self._header_deadline = None
        transport = self.transport
        if transport is None or self._messages:
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


class GatewayServer(web.Server):
    """An aiohttp low-level server that builds :class:`GatewayProtocol` connections."""

    def __init__(self, handler: Any, *, header_timeout_s: float, **kwargs: Any) -> None:
        factory = kwargs.pop("request_factory", None)
        super().__init__(handler, request_factory=self._request, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._make_app_request = factory

    def _request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: Any,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        """The request, answered as HTTP/1.1 if its version is one the gateway refuses."""
        sent_version = message.version
        unsupported = sent_version not in _SUPPORTED_VERSIONS
        if unsupported:
            message = message._replace(version=HttpVersion11, should_close=True)
        if self._make_app_request is not None:
            request = self._make_app_request(message, payload, protocol, writer, task)
        else:
            request = web.BaseRequest(message, payload, protocol, writer, task, self._loop)
        if unsupported:
            request[UNSUPPORTED_VERSION] = sent_version
        return request

    def __call__(self) -> RequestHandler:
        return GatewayProtocol(
            self, loop=self._loop, header_timeout_s=self._header_timeout_s, **self._kwargs
        )


class GatewayAppRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose connections are :class:`GatewayProtocol`, so the
    admin listener gives the same JSON protocol errors (and no tracebacks) as the public one."""

    def __init__(self, app: web.Application, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout_s = header_timeout_s

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GatewayServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            header_timeout_s=self._header_timeout_s,
            handler_cancellation=plain.handler_cancellation,
            access_log=None,
        )
