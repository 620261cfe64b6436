"""The instruction counter's client and dump reader: every request sent, a non-200 counted,
and a callgrind dump's total read from its summary line."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from loadtests.instructions import _summary, send
from loadtests.wrk import POST_BODY

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[bytes]]]:
    bodies: list[bytes] = []

    async def answer(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(status=200 if len(bodies) % 10 else 503)

    app = web.Application()
    app.router.add_post("/v1/completions", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}/v1/completions", bodies
    await runner.cleanup()


async def test_every_request_is_sent_once_and_each_non_200_counted(
    server: tuple[str, list[bytes]],
) -> None:
    url, bodies = server
    failed = await send(url, 50, concurrency=4)
    assert len(bodies) == 50 and set(bodies) == {POST_BODY}
    assert failed == 5  # every tenth answer was a 503


def test_a_dump_total_is_its_summary_line(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1"
    dump.write_text("# callgrind format\nevents: Ir\nfl=x\nfn=y\n3 10\nsummary: 937412345\n")
    assert _summary(dump) == 937412345
    (tmp_path / "empty").write_text("events: Ir\n")
    with pytest.raises(ValueError):
        _summary(tmp_path / "empty")
