"""A real OpenAI-style backend for cache tests: it numbers its answers (so a replay shows),
holds requests at a gate the test opens, and fails when told to."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class CountingBackend:
    port: int = 0
    arrived: int = 0  # requests received, gate or not
    served: int = 0  # requests answered
    fail_next: int = 0  # answer this many with a 500 first
    break_streams: bool = False  # close the connection after a stream's first event
    cache_control: str | None = None  # sent as the answers' Cache-Control
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


BACKEND = web.AppKey("backend", CountingBackend)


async def _complete(request: web.Request) -> web.StreamResponse:
    backend = request.app[BACKEND]
    backend.arrived += 1
    payload = await request.json()
    await backend.gate.wait()
    backend.served += 1
    number = backend.served
    if backend.fail_next > 0:
        backend.fail_next -= 1
        return web.json_response({"error": {"message": "injected"}}, status=500)
    headers = {"Cache-Control": backend.cache_control} if backend.cache_control else {}
    if not payload.get("stream"):
        answer = {"n": number, "prompt": payload.get("prompt")}
        return web.json_response(answer, headers=headers)
    response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(3):
        await response.write(f"data: {json.dumps({'n': number, 'i': i})}\n\n".encode())
        if backend.break_streams and request.transport is not None:
            request.transport.close()  # the answer breaks off after its first event
            return response
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _ready(request: web.Request) -> web.Response:
    return web.json_response({"ready": True})


@asynccontextmanager
async def counting_backend() -> AsyncIterator[CountingBackend]:
    backend = CountingBackend()
    backend.gate.set()
    app = web.Application()
    app[BACKEND] = backend
    app.router.add_get("/ready", _ready)
    app.router.add_post("/{tail:.*}", _complete)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    backend.port = runner.addresses[0][1]
    try:
        yield backend
    finally:
        backend.gate.set()
        await runner.cleanup()
