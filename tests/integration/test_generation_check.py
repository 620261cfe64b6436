"""The one-token generation check marks down a backend whose health endpoint still says 200."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from gateway.server import Gateway
from tests.helpers import gateway_yaml, running_gateway, wait_until

pytestmark = pytest.mark.timeout(30)

CHECKS = (
    "health_check: {interval: 50ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 1,"
    " generation_interval: 100ms, generation_timeout: 200ms, generation_model: tiny}\n"
)


@asynccontextmanager
async def engine(wedged: bool, generations: list[dict]) -> AsyncIterator[str]:
    """An inference server whose /ready always answers 200; a wedged one never generates."""

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def complete(request: web.Request) -> web.Response:
        generations.append(await request.json())
        if wedged:
            await asyncio.Event().wait()
        return web.json_response({"choices": [{"text": "!"}]})

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_post("/v1/completions", complete)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def passing(gateway: Gateway, url: str) -> bool:
    for endpoint in gateway.runtime.fleet.endpoints.values():
        if str(endpoint.url) == url:
            assert endpoint.health.active is not None
            return endpoint.health.active.passing
    raise AssertionError(f"no backend {url}")


async def test_a_wedged_engine_is_marked_down_and_a_working_one_stays_up() -> None:
    sent_wedged: list[dict] = []
    sent_working: list[dict] = []
    async with (
        engine(True, sent_wedged) as wedged,
        engine(False, sent_working) as working,
        running_gateway(gateway_yaml([wedged, working], CHECKS)) as gw,
    ):
        await wait_until(lambda: not passing(gw, wedged))
        await wait_until(lambda: len(sent_working) >= 2)
        assert passing(gw, working)
        assert sent_working[0] == {
            "prompt": "Hi",
            "max_tokens": 1,
            "temperature": 0,
            "model": "tiny",
        }


def checks_passed(gateway: Gateway) -> float:
    registry = gateway.runtime.metrics.registry
    (name,) = gateway.runtime.fleet.endpoints
    labels = {"backend": name, "result": "pass"}
    return registry.get_sample_value("tailgate_health_checks_total", labels) or 0.0


async def test_without_a_generation_interval_only_the_health_path_is_asked() -> None:
    sent: list[dict] = []
    checks = "health_check: {interval: 50ms, timeout: 200ms, unhealthy_threshold: 2}\n"
    async with engine(True, sent) as wedged, running_gateway(gateway_yaml([wedged], checks)) as gw:
        await wait_until(lambda: checks_passed(gw) >= 3)
        assert passing(gw, wedged) and sent == []
