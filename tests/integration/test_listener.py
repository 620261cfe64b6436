"""The listener on its own: a GatewayServer (and a GatewayAppRunner) on 127.0.0.1 with a handler
of the test's own, raw sockets as clients. What is under test is when the request-header
deadline runs: from the first byte of each request, never while a request is being answered."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from gateway.listener import GatewayAppRunner, GatewayServer
from tests.helpers import json_body, raw_request, status_of

pytestmark = pytest.mark.timeout(30)

HEADER_TIMEOUT_S = 0.3
APP_NAME = web.AppKey("app_name", str)
BIG_ANSWER_BYTES = 32 << 20  # more than loopback's socket buffers: its writes must wait


async def answer(request: web.BaseRequest) -> web.StreamResponse:
    if request.path == "/slow":
        await asyncio.sleep(3 * HEADER_TIMEOUT_S)  # the handler's own pace: what is under test
    if request.path == "/big":
        return web.Response(body=b"x" * BIG_ANSWER_BYTES)
    body = await request.read()
    return web.json_response({"path": request.path, "body_len": len(body)})


@asynccontextmanager
async def listening(runner: web.BaseRunner) -> AsyncIterator[int]:
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def gateway_listener() -> web.ServerRunner:
    server = GatewayServer(answer, header_timeout_s=HEADER_TIMEOUT_S, access_log=None)
    return web.ServerRunner(server)


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 answer with a Content-Length: (head, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


async def test_each_request_on_a_kept_alive_connection_gets_its_own_header_deadline() -> None:
    async with listening(gateway_listener()) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            async with asyncio.timeout(10):
                writer.write(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
                head, _ = await read_answer(reader)
                assert head.startswith(b"HTTP/1.1 200")
                # Idle between requests (no byte sent) is the keep-alive timeout's business.
                await asyncio.sleep(3 * HEADER_TIMEOUT_S)  # the client's own pace
                writer.write(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
                head, body = await read_answer(reader)
                assert head.startswith(b"HTTP/1.1 200")
                assert json.loads(body)["path"] == "/two"
                # A third request that never completes its headers is cut off.
                writer.write(b"GET /three HTTP/1.1\r\nHost: x\r\n")
                head, body = await read_answer(reader)
                assert head.startswith(b"HTTP/1.1 408")
                assert json.loads(body)["error"]["type"] == "request_timeout"
                assert await reader.read() == b""  # and the connection is closed
        finally:
            writer.close()


async def test_a_request_being_answered_is_never_cut_off_by_the_header_deadline() -> None:
    async with listening(gateway_listener()) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            async with asyncio.timeout(10):
                # A slow answer with a request pipelined behind it: both answered, in order.
                writer.write(
                    b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n"
                )
                for path in ("/slow", "/after"):
                    head, body = await read_answer(reader)
                    assert head.startswith(b"HTTP/1.1 200")
                    assert json.loads(body)["path"] == path
                # A body trickled for longer than the header deadline is the body's business.
                writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
                for piece in (b"ab", b"cd", b"ef"):
                    await asyncio.sleep(HEADER_TIMEOUT_S)  # the client's own pace
                    writer.write(piece)
                head, body = await read_answer(reader)
                assert head.startswith(b"HTTP/1.1 200")
                assert json.loads(body)["body_len"] == 6
        finally:
            writer.close()


async def test_a_request_queued_behind_an_answer_the_client_is_slow_to_read_is_answered() -> None:
    async with listening(gateway_listener()) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            async with asyncio.timeout(10):
                writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                first = await reader.readuntil(b"\r\n\r\n")  # the big answer is on its way
                assert first.startswith(b"HTTP/1.1 200")
                # The next request arrives while the big answer fills the socket buffers; the
                # client does not read for longer than the header deadline.
                writer.write(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(3 * HEADER_TIMEOUT_S)  # the client's own pace
                assert len(await reader.readexactly(BIG_ANSWER_BYTES)) == BIG_ANSWER_BYTES
                head, body = await read_answer(reader)
                assert head.startswith(b"HTTP/1.1 200")
                assert json.loads(body)["path"] == "/next"
        finally:
            writer.close()


async def test_an_application_on_the_gateway_protocol_keeps_its_lifecycle() -> None:
    seen: list[str] = []

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"app": request.app[APP_NAME]})

    async def startup(app: web.Application) -> None:
        seen.append("startup")

    async def shutdown(app: web.Application) -> None:
        seen.append("shutdown")

    async def cleanup(app: web.Application) -> None:
        seen.append("cleanup")

    app = web.Application()
    app[APP_NAME] = "admin"
    app.router.add_get("/hello", hello)
    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)
    runner = GatewayAppRunner(app, header_timeout_s=HEADER_TIMEOUT_S, access_log=None)
    async with listening(runner) as port:
        assert seen == ["startup"]
        ok = await raw_request(port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(ok) == 200
        assert json_body(ok) == {"app": "admin"}
        missing = await raw_request(port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(missing) == 404  # the application's router answers, not the listener
        garbage = await raw_request(port, b"G(T / HTTP/1.1\r\n\r\n")
        assert status_of(garbage) == 400
        assert json_body(garbage)["error"]["type"] == "bad_request"
        slow = await raw_request(port, b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        assert status_of(slow) == 408
    assert seen == ["startup", "shutdown", "cleanup"]
