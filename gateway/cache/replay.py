"""Answering a request from a cached answer: a whole body, or the stream event by event."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from gateway.cache.entry import CachedResponse


async def replay(
    request: web.BaseRequest, entry: CachedResponse, headers: Mapping[str, str]
) -> web.StreamResponse:
    headers = {**headers, "Content-Type": entry.content_type}
    if not entry.streamed:
        response = web.Response(status=entry.status, body=entry.chunks[0], headers=headers)
        await response.prepare(request)
        await response.write_eof()
        return response
    stream = web.StreamResponse(status=entry.status, headers=headers)
    await stream.prepare(request)
    for event in entry.chunks:  # one write per event, as the backend sent them
        await stream.write(event)
    await stream.write_eof()
    return stream
