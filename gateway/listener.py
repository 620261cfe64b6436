"""The public HTTP listener: aiohttp's low-level server with a proxy's defences.

aiohttp alone answers malformed requests with a text/plain 400 and has no deadline for a client
that trickles its request headers (slowloris). This subclass answers every protocol-level error
with the gateway's JSON error (400, 414 for an over-long request line, 431 for over-large
headers) and closes a connection whose request headers do not complete within
``timeouts.request_header`` of their first byte with 408.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway.errors import error_body, raw_error


def _classify(exc: BaseException | None, message: str | None) -> tuple[int, str, str]:
    text = str(message or exc or "malformed request")
    if isinstance(exc, LineTooLong):
        if "status line" in text.lower() or "request line" in text.lower():
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

    def data_received(self, data: bytes) -> None:
        waiting_for_request = (
            not getattr(self, "_request_in_progress", False)
            and self._payload_parser is None
            and not self._messages
        )
        if waiting_for_request and data and self._header_deadline is None:
            self._header_deadline = self._loop.call_later(
                self._header_timeout_s, self._header_timeout
            )
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
        if self.transport is None or self._messages:
            return
        message = "request headers not received in time"
        self.transport.write(raw_error(408, "Request Timeout", "request_timeout", message))
        self.force_close()
        self.transport.close()

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
            self.log_debug("rejected malformed request: %s", message or exc)
            code, kind, text = _classify(exc, message)
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
        super().__init__(handler, **kwargs)
        self._header_timeout_s = header_timeout_s

    def __call__(self) -> RequestHandler:
        return GatewayProtocol(
            self, loop=self._loop, header_timeout_s=self._header_timeout_s, **self._kwargs
        )
