"""The pending queue through a real gateway: first come, first served, and no one lost."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from tests.helpers import base, gateway_yaml, running_gateway, wait_until


async def test_queued_requests_reach_the_backend_in_arrival_order() -> None:
    seen: list[str] = []
    release = asyncio.Queue[None]()

    async def held(request: web.Request) -> web.Response:
        seen.append(request.headers["X-Seq"])
        await release.get()  # the test lets one request finish at a time
        return web.json_response({"seq": request.headers["X-Seq"]})

    app = web.Application()
    app.router.add_post("/v1/completions", held)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    extra = (
        "limits: {max_requests_per_backend: 1, max_pending: 16, queue_timeout: 20s}\n"
        "health_check: {enabled: false}\n"
    )
    try:
        async with (
            running_gateway(gateway_yaml([f"http://127.0.0.1:{port}"], extra)) as gw,
            aiohttp.ClientSession() as client,
        ):
            capacity = gw.runtime.capacity

            async def send(seq: int) -> str:
                async with client.post(
                    f"{base(gw)}/v1/completions", json={}, headers={"X-Seq": str(seq)}
                ) as resp:
                    assert resp.status == 200
                    return str((await resp.json())["seq"])

            tasks = [asyncio.create_task(send(0))]
            await wait_until(lambda: seen == ["0"])
            for seq in range(1, 6):  # each queues behind the last, in this order
                tasks.append(asyncio.create_task(send(seq)))
                await wait_until(lambda seq=seq: capacity.pending == seq)
            for served in range(6):
                await wait_until(lambda served=served: len(seen) == served + 1)
                release.put_nowait(None)
            answers = await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
            assert seen == ["0", "1", "2", "3", "4", "5"]
            assert answers == seen
            assert capacity.pending == 0
    finally:
        await runner.cleanup()
