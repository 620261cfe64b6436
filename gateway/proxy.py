"""HTTP forwarding to one upstream: streams both ways, strips hop-by-hop headers, maps failures.

This module knows nothing of scores, health or retries. ``send`` performs one try and returns
the upstream response with its headers read (the body still unread, so it can be streamed), or
raises :class:`UpstreamFailure` naming what went wrong in the vocabulary of
``gateway.failures``, whose table says whether the request reached the upstream (which is what
the retry policy needs to decide if a resend is safe) and whose fault it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.failures import Failure
from gateway.headers import FORWARDING, HeaderFilter, Network, forwarded_for, is_trusted_proxy
from gateway.upstream import (
    UpstreamClient,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)

# Set by the gateway itself for the hop it makes, so never copied from the other side (the
# request id is written afresh too, from the client's when it is sane). The Authorization
# that goes upstream is the tenants' to decide (``TenantGate.upstream_authorization``).
_NOT_FORWARDED = frozenset({"host", "content-length", "expect", "authorization"})
_REWRITTEN_FORWARDING = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
_NOT_RELAYED = frozenset({"content-length"})
# One filter per (request id header, trusted client): the config's few spellings.
_UPSTREAM_FILTERS: dict[tuple[str, bool], HeaderFilter] = {}
_RESPONSE_FILTERS: dict[str, HeaderFilter] = {}


def _upstream_filter(request_id_header: str, trusted: bool) -> HeaderFilter:
    key = (request_id_header, trusted)
    header_filter = _UPSTREAM_FILTERS.get(key)
    if header_filter is None:
        # from a trusted proxy, X-Real-IP and Forwarded pass; the X-Forwarded-* set is extended
        forwarding = _REWRITTEN_FORWARDING if trusted else FORWARDING
        drop = _NOT_FORWARDED | forwarding | {request_id_header.lower()}
        header_filter = _UPSTREAM_FILTERS[key] = HeaderFilter(drop)
    return header_filter


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


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

    Every read is the client's time and has the client's deadlines: at most ``idle_timeout_s``
    between bytes and ``total_timeout_s`` for the whole body from when the request arrived.
    A body that stops arriving fails with :attr:`Failure.CLIENT_BODY_TIMEOUT`, a body that
    breaks off with :attr:`Failure.CLIENT_BODY`; neither is a backend's failure. A client
    waiting on ``Expect: 100-continue`` is told to go on at the first read, i.e. only once the
    gateway has accepted the request.
    """

    __slots__ = (
        "_client_wait_s",
        "_continue_owed",
        "_deadline",
        "_idle_timeout_s",
        "_loop",
        "_max_body",
        "_request",
        "_streamed",
        "buffered",
        "consumed",
    )

    def __init__(
        self,
        request: web.BaseRequest,
        max_body: int,
        idle_timeout_s: float = 5.0,
        total_timeout_s: float = 30.0,
    ) -> None:
        self._request = request
        self._max_body = max_body
        self._idle_timeout_s = idle_timeout_s
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + total_timeout_s
        self._continue_owed = (
            request.version >= (1, 1)
            and request.headers.get("Expect", "").lower() == "100-continue"
        )
        self.buffered: bytes | None = None
        self.consumed = False
        self._streamed = 0  # bytes streamed so far, held to max_body
        self._client_wait_s = 0.0  # time a try spent waiting for streamed body bytes

    def take_client_wait_s(self) -> float:
        """Seconds the current try waited for the client's streamed body since the last call:
        the client's time, to be kept out of the backend's latency."""
        waited, self._client_wait_s = self._client_wait_s, 0.0
        return waited

    @classmethod
    def of_bytes(cls, request: web.BaseRequest, data: bytes) -> RequestBody:
        """A body the gateway wrote itself (a stream's continuation), sent in place of the
        client's."""
        body = cls(request, len(data))
        body.buffered = data
        return body

    async def buffer_if_small(self, buffer_limit: int) -> None:
        """Read the body up front if its declared length is at most ``buffer_limit``.

        With ``buffer_limit`` at ``max_body`` (routing on the JSON ``model`` needs the whole
        body) a chunked body is read up front too, and one over ``max_body`` raises
        :class:`BodyTooLarge`.
        """
        length = self._request.content_length
        if not self._request.body_exists:
            self.buffered = b""
        elif (length is not None and length <= buffer_limit) or (
            length is None and buffer_limit >= self._max_body
        ):
            self.consumed = True
            arrived = self._arrived_whole()
            if arrived is not None:
                self.buffered = arrived
                return
            self.buffered = b"".join([chunk async for chunk in self._chunks()])
            self._client_wait_s = 0.0  # read before any try: no try's latency to keep it out of

    def _arrived_whole(self) -> bytes | None:
        """The whole body when it has already arrived (most small bodies come in the same
        packet as the headers), else None: then it needs no wait, so no deadline timer and no
        async generator (one ``asyncio.timeout`` per chunk showed as ~9.5% of a small POST's
        profile). A client still owed ``100 Continue`` has sent nothing yet."""
        content = self._request.content
        if self._continue_owed or not content.is_eof():
            return None
        try:
            data = content.read_nowait()
        except (aiohttp.ClientPayloadError, ConnectionError) as exc:
            detail = str(exc) or type(exc).__name__
            raise UpstreamFailure(Failure.CLIENT_BODY, detail) from exc
        if len(data) > self._max_body:
            raise BodyTooLarge()
        return data

    @property
    def replayable(self) -> bool:
        return self.buffered is not None or not self.consumed

    def payload(self) -> bytes | AsyncIterator[bytes] | None:
        if self.buffered is not None:
            return self.buffered if self.buffered else None
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        self.consumed = True
        async for chunk in self._chunks():
            yield chunk

    async def _chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive, held to ``max_body`` and the client's deadlines."""
        if self._continue_owed:
            self._continue_owed = False
            await self._request.writer.write(_CONTINUE)
        content = self._request.content
        while True:
            asked_at = self._loop.time()
            left_s = min(self._idle_timeout_s, self._deadline - asked_at)
            try:
                async with asyncio.timeout(max(left_s, 0.0)):
                    chunk = await content.readany()
                self._client_wait_s += self._loop.time() - asked_at
            except TimeoutError:
                raise UpstreamFailure(Failure.CLIENT_BODY_TIMEOUT, "request body stalled") from None
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
    request: web.BaseRequest,
    request_id: str,
    request_id_header: str,
    upstream: URL,
    trusted_proxies: tuple[Network, ...] = (),
) -> CIMultiDict[str]:
    """End-to-end client headers (no Authorization: the caller adds the one that goes
    upstream) plus the X-Forwarded-* set, the request id and the backend's Host.

    The client's own forwarding headers are extended only when it is a trusted proxy; from
    anyone else they are dropped and written afresh from the connection. The gateway's own
    headers are appended, never searched for and replaced: the filter already left out any
    copy the client sent.
    """
    client_ip = request.remote
    client = request.headers
    trusted = is_trusted_proxy(client_ip, trusted_proxies)
    pairs = _upstream_filter(request_id_header, trusted).pairs(client)
    if trusted:
        chain = client.get("X-Forwarded-For")
        proto = client.get("X-Forwarded-Proto", request.scheme)
        host = client.get("X-Forwarded-Host", request.host)
    else:
        chain, proto, host = None, request.scheme, request.host
    pairs += (
        ("X-Forwarded-For", forwarded_for(chain, client_ip)),
        ("X-Forwarded-Proto", proto),
        ("X-Forwarded-Host", host),
        (request_id_header, request_id),
        ("Host", upstream.raw_authority),
    )
    return CIMultiDict(pairs)


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


def response_headers(upstream: UpstreamResponse, request_id_header: str) -> list[tuple[str, str]]:
    """Upstream headers safe to send to the client (hop-by-hop, framing and the request id
    removed: the gateway appends its own), as the pairs aiohttp's response copies them from."""
    header_filter = _RESPONSE_FILTERS.get(request_id_header)
    if header_filter is None:
        drop = _NOT_RELAYED | {request_id_header.lower()}
        header_filter = _RESPONSE_FILTERS[request_id_header] = HeaderFilter(drop)
    return header_filter.pairs(upstream.headers)
