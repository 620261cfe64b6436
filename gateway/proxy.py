"""HTTP forwarding to one upstream: streams both ways, strips hop-by-hop headers, maps failures.

This module knows nothing of scores, health or retries. ``send`` performs one try and returns
the upstream response with its headers read (the body still unread, so it can be streamed), or
raises :class:`UpstreamFailure` naming what went wrong in the vocabulary of
``gateway.failures``, whose table says whether the request reached the upstream (which is what
the retry policy needs to decide if a resend is safe) and whose fault it was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.failures import Failure
from gateway.headers import end_to_end, forwarded_for
from gateway.upstream import (
    UpstreamClient,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)

# Set by the gateway itself for the hop it makes, so never copied from the other side.
_NOT_FORWARDED = frozenset({"host", "content-length", "expect"})
_NOT_RELAYED = frozenset({"content-length"})


@dataclass
class UpstreamFailure(Exception):
    failure: Failure
    detail: str

    def __str__(self) -> str:
        return f"{self.failure.value}: {self.detail}"


class BodyTooLarge(Exception):
    pass


class RequestBody:
    """The client's request body, either buffered (so a retry can resend it) or streamed once.

    Bodies up to ``buffer_limit`` with a known length are read up front; larger or chunked ones
    are streamed straight through, and then a retry is only possible if the stream was never
    started (``consumed`` stays False), e.g. after a connect failure.
    """

    def __init__(self, request: web.BaseRequest, max_body: int) -> None:
        self._request = request
        self._max_body = max_body
        self.buffered: bytes | None = None
        self.consumed = False
        self._streamed = 0  # bytes streamed so far, held to max_body

    @classmethod
    def of_bytes(cls, request: web.BaseRequest, data: bytes) -> RequestBody:
        """A body the gateway wrote itself (a stream's continuation), sent in place of the
        client's."""
        body = cls(request, len(data))
        body.buffered = data
        return body

    async def buffer_if_small(self, buffer_limit: int) -> None:
        length = self._request.content_length
        if not self._request.body_exists:
            self.buffered = b""
        elif length is not None and length <= buffer_limit:
            self.buffered = await self._request.read()

    @property
    def replayable(self) -> bool:
        return self.buffered is not None or not self.consumed

    def payload(self) -> bytes | AsyncIterator[bytes] | None:
        if self.buffered is not None:
            return self.buffered if self.buffered else None
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        self.consumed = True
        content = self._request.content
        while True:
            try:
                chunk = await content.readany()
            except (aiohttp.ClientPayloadError, ConnectionError) as exc:
                detail = str(exc) or type(exc).__name__
                raise UpstreamFailure(Failure.CLIENT_BODY, detail) from exc
            if not chunk:
                return
            self._streamed += len(chunk)
            if self._streamed > self._max_body:
                raise BodyTooLarge()
            yield chunk


def upstream_headers(
    request: web.BaseRequest, request_id: str, request_id_header: str, upstream: URL
) -> CIMultiDict[str]:
    """End-to-end client headers plus the X-Forwarded-* set and the request id."""
    headers = end_to_end(request.headers, drop=_NOT_FORWARDED)
    client_ip = request.remote
    headers["X-Forwarded-For"] = forwarded_for(request.headers.get("X-Forwarded-For"), client_ip)
    headers["X-Forwarded-Proto"] = request.headers.get("X-Forwarded-Proto", request.scheme)
    headers["X-Forwarded-Host"] = request.headers.get("X-Forwarded-Host", request.host)
    headers[request_id_header] = request_id
    headers["Host"] = upstream.raw_authority
    return headers


def request_target(request: web.BaseRequest) -> str:
    """The path and query to ask the backend for, unchanged from the client's request.

    Only the path and query of the client's request-target are used (the backend's base URL
    supplies scheme, host and port), so neither an absolute-URI request nor a Host header can
    point the gateway at anything but a configured backend.
    """
    url = request.rel_url
    raw = url.raw_path
    if not raw.startswith("/"):
        raw = "/" + raw
    query = url.raw_query_string
    return f"{raw}?{query}" if query else raw


async def send(
    client: UpstreamClient,
    request: web.BaseRequest,
    base: URL,
    headers: CIMultiDict[str],
    body: RequestBody,
    connect_timeout_s: float,
    headers_timeout_s: float,
) -> UpstreamResponse:
    """One try: send the request and wait for the response headers (not the body).

    Raises :class:`UpstreamFailure` for connect failures, resets and timeouts, and
    :class:`BodyTooLarge` when the streamed client body goes over ``limits.max_body``.
    """
    try:
        return await client.request(
            request.method,
            base,
            request_target(request),
            headers,
            body.payload(),
            request.content_length,
            connect_timeout_s,
            headers_timeout_s,
        )
    except (BodyTooLarge, UpstreamFailure):
        raise
    except UpstreamError as exc:
        raise classify_error(exc) from None


def classify_error(exc: UpstreamError) -> UpstreamFailure:
    """Which :class:`Failure` a transport error is (the table says whether it reached the
    backend: a per-try timeout counts as reached, so a non-idempotent request is not resent)."""
    if isinstance(exc, UpstreamConnectError):
        return UpstreamFailure(Failure.CONNECT, _short(exc))
    if isinstance(exc, UpstreamTimeout):
        return UpstreamFailure(Failure.TIMEOUT, "no response headers in time")
    return UpstreamFailure(Failure.RESET, _short(exc))


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]


def response_headers(upstream: UpstreamResponse) -> CIMultiDict[str]:
    """Upstream headers safe to send to the client (hop-by-hop and framing removed)."""
    return end_to_end(upstream.headers, drop=_NOT_RELAYED)
