"""The floor peer forwards over real HTTP: body, status, headers both ways, streamed answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.upstream import UpstreamClient
from loadtests.floor import forwarder
from loadtests.peers import PEERS, Backend, Budget, command, render
from loadtests.wrk import POST_BODY
from tests.helpers import free_port

pytestmark = pytest.mark.timeout(30)


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    headers = {"X-Seen-Path": request.path_qs, "X-Seen-Trace": request.headers.get("X-Trace", "")}
    return web.Response(status=201, body=body[::-1], headers=headers, content_type="text/plain")


async def _stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for i in range(3):
        await response.write(f"data: {i}\n\n".encode())
    await response.write_eof()
    return response


async def _site(app_or_server: web.Application | web.Server, port: int) -> web.BaseRunner:
    runner: web.BaseRunner
    if isinstance(app_or_server, web.Application):
        runner = web.AppRunner(app_or_server)
    else:
        runner = web.ServerRunner(app_or_server)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@pytest.fixture
async def floor_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/completions", _echo)
    app.router.add_get("/stream", _stream)
    backend_port, floor_port = free_port(), free_port()
    backend = await _site(app, backend_port)
    client = UpstreamClient(8, 60.0)
    floor = await _site(forwarder(client, URL(f"http://127.0.0.1:{backend_port}")), floor_port)
    try:
        yield f"http://127.0.0.1:{floor_port}"
    finally:
        await floor.cleanup()
        await client.close()
        await backend.cleanup()


async def test_the_floor_forwards_body_status_and_headers(floor_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(3):  # the upstream connection is reused between requests
            url = f"{floor_url}/v1/completions?n=1"
            async with session.post(url, data=POST_BODY, headers={"X-Trace": "t1"}) as resp:
                assert resp.status == 201
                assert await resp.read() == POST_BODY[::-1]
                assert resp.headers["X-Seen-Path"] == "/v1/completions?n=1"
                assert resp.headers["X-Seen-Trace"] == "t1"


async def test_the_floor_streams_an_answer_of_unknown_length(floor_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{floor_url}/stream") as resp:
            assert resp.status == 200
            assert await resp.read() == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


async def test_a_backend_that_refuses_is_a_502_json_error() -> None:
    port, dead = free_port(), free_port()
    client = UpstreamClient(8, 60.0)
    floor = await _site(forwarder(client, URL(f"http://127.0.0.1:{dead}")), port)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/x", data=b"{}") as resp:
                assert resp.status == 502
                assert "upstream" in (await resp.json())["error"]
    finally:
        await floor.cleanup()
        await client.close()


def test_the_peer_runs_the_floor_module_against_the_first_backend(tmp_path: Path) -> None:
    peer = PEERS["aiohttp floor"]
    args = tmp_path / "peer.args"
    backends = [Backend("a", 18001), Backend("b", 18002)]
    args.write_text(render(peer, backends, 18080, 18081, tmp_path, Budget()))
    cmd = command(peer, args, tmp_path)
    assert cmd is not None
    assert cmd[1:] == ["-m", "loadtests.floor", "--port", "18080",
                       "--backend", "http://127.0.0.1:18001"]  # fmt: skip
