"""The shared store against a real redis-server: replicas share hits; Redis down or slow means
served uncached, never a failed request."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from redis.asyncio import Redis

from tests.helpers import (
    admin,
    free_port,
    gateway_yaml,
    get_json,
    running_gateway,
    wait_until_async,
)
from tests.integration.cache_backend import counting_backend
from tests.redis_server import redis_server

pytestmark = pytest.mark.timeout(60)

GREEDY = {"model": "m", "prompt": "shared", "temperature": 0}
URL = "/v1/completions"


@pytest.fixture
async def redis_port() -> AsyncIterator[int]:
    async with redis_server() as (_, port):
        yield port


@pytest.fixture
async def redis(redis_port: int) -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=redis_port)
    try:
        yield client
    finally:
        await client.aclose()


def _cache_yaml(redis_port: int, timeout: str = "2s") -> str:
    url = f"redis://127.0.0.1:{redis_port}/0"
    return f"cache: {{enabled: true, redis: {{url: '{url}', timeout: {timeout}}}}}\n"


async def _post(client: aiohttp.ClientSession, port: int | None) -> tuple[int, str | None]:
    async with client.post(f"http://127.0.0.1:{port}{URL}", json=GREEDY) as resp:
        await resp.read()
        return resp.status, resp.headers.get("X-Tailgate-Cache")


async def test_replicas_share_answers_through_redis(redis: Redis, redis_port: int) -> None:
    async with (
        counting_backend() as backend,
        running_gateway(gateway_yaml([backend.url], _cache_yaml(redis_port))) as one,
        running_gateway(gateway_yaml([backend.url], _cache_yaml(redis_port))) as two,
        aiohttp.ClientSession() as client,
    ):
        assert await _post(client, one.public_port) == (200, "miss")

        async def stored() -> bool:  # the gateway writes to Redis off the request path
            return len(await redis.keys("tailgate:cache:*")) == 1

        await wait_until_async(stored)
        (key,) = await redis.keys("tailgate:cache:*")
        assert 0 < await redis.pttl(key) <= 300_000  # the TTL travels with the entry
        assert await _post(client, two.public_port) == (200, "hit")
        assert backend.served == 1
        assert await _post(client, two.public_port) == (200, "hit")  # now from its own memory


async def test_redis_down_serves_uncached() -> None:
    nobody = free_port()
    async with (
        counting_backend() as backend,
        running_gateway(gateway_yaml([backend.url], _cache_yaml(nobody))) as gw,
        aiohttp.ClientSession() as client,
    ):
        assert await _post(client, gw.public_port) == (200, "miss")
        assert await _post(client, gw.public_port) == (200, "hit")  # memory still serves
        state = await get_json(f"{admin(gw)}/admin/cache")
        assert state["shared_store"] == {"available": False}
        async with client.get(f"{admin(gw)}/metrics") as resp:
            assert 'tailgate_cache_shared_store_errors_total{operation="get"} 1.0' in (
                await resp.text()
            )
        assert backend.served == 1


async def test_slow_redis_serves_uncached(redis: Redis, redis_port: int) -> None:
    async with (
        counting_backend() as backend,
        running_gateway(gateway_yaml([backend.url], _cache_yaml(redis_port, "50ms"))) as gw,
        aiohttp.ClientSession() as client,
    ):
        # Redis holds every client's commands for a second: far past the gateway's 50 ms.
        await redis.execute_command("CLIENT", "PAUSE", "1000", "ALL")
        assert await _post(client, gw.public_port) == (200, "miss")
        assert backend.served == 1
        state = await get_json(f"{admin(gw)}/admin/cache")
        assert state["shared_store"] == {"available": False}
