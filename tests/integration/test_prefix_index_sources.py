"""The prefix index through a real gateway in front of emulated vLLM pods (HTTP on 127.0.0.1):
its bound per backend follows the KV cache size the pod's /metrics reports, and a backend that
answers a 5xx loses its entries, so the conversation it held moves on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from gateway.balancer.prefix_aware import TOKENS_PER_BLOCK
from gateway.server import Gateway
from loadtests.llm.costs import EngineCosts
from loadtests.llm.pod import build_app
from tests.helpers import admin, base, get_json, running_gateway, wait_until_async

pytestmark = pytest.mark.timeout(60)

BLOCK_TOKENS = 16  # the emulated pods' vLLM block_size


@asynccontextmanager
async def llm_pods(*kv_blocks: int) -> AsyncIterator[list[str]]:
    runners = []
    try:
        for blocks in kv_blocks:
            costs = EngineCosts(kv_blocks=blocks, block_tokens=BLOCK_TOKENS)
            runner = web.AppRunner(build_app(costs), access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            runners.append(runner)
        yield [f"http://127.0.0.1:{r.addresses[0][1]}" for r in runners]
    finally:
        for runner in runners:
            await runner.cleanup()


def config(urls: list[str]) -> str:
    lines = ["listen: {host: 127.0.0.1, port: 0}", "admin: {host: 127.0.0.1, port: 0}"]
    lines.append("backends:")
    lines += [f"  - {{url: '{u}', name: pod{i}}}" for i, u in enumerate(urls)]
    lines += [
        "balancer: {policy: prefix_aware, queue_depth: {scrape_interval: 50ms}}",
        "headers: {expose_backend: true}",
        "logging: {access_log: false}",
        "health_check: {enabled: false}",
    ]
    return "\n".join(lines) + "\n"


async def index_of(gw: Gateway) -> dict[str, dict[str, int]]:
    state = await get_json(f"{admin(gw)}/admin/backends")
    return {b["name"]: b["prefix_index"] for b in state["groups"]["default"]["backends"]}


async def chat(client: aiohttp.ClientSession, gw: Gateway, messages: list[dict[str, str]]) -> str:
    body = {"model": "m", "stream": True, "max_tokens": 4, "messages": messages}
    async with client.post(f"{base(gw)}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        await resp.read()
        return resp.headers["X-Tailgate-Backend"]


async def test_the_index_bound_per_backend_is_the_kv_cache_size_it_reports() -> None:
    async with llm_pods(640, 6400) as urls, running_gateway(config(urls)) as gw:
        expected = {
            f"pod{i}": round(blocks * BLOCK_TOKENS / TOKENS_PER_BLOCK)
            for i, blocks in enumerate((640, 6400))
        }

        async def reported() -> bool:
            capacities = {k: v["capacity_blocks"] for k, v in (await index_of(gw)).items()}
            return capacities == expected

        await wait_until_async(reported)  # 160 and 1,600 blocks, not the configured 4,096


async def test_a_backend_answering_5xx_loses_its_entries_and_the_session_moves_on() -> None:
    system = {"role": "system", "content": "You are a careful assistant. " * 60}
    async with llm_pods(6400, 6400) as urls, running_gateway(config(urls)) as gw:
        async with aiohttp.ClientSession() as client:
            messages = [system, {"role": "user", "content": "first question " * 40}]
            holder = await chat(client, gw, messages)
            assert (await index_of(gw))[holder]["blocks"] > 0
            url = urls[int(holder.removeprefix("pod"))]
            async with client.post(f"{url}/_control", json={"error_rate": 1.0}) as resp:
                assert resp.status == 200
            messages = [*messages, {"role": "assistant", "content": "ok " * 20}]
            messages.append({"role": "user", "content": "second question " * 20})
            served = await chat(client, gw, messages)  # the 500 is retried on the other pod
            assert served != holder
            assert (await index_of(gw))[holder]["blocks"] == 0
            messages = [*messages, {"role": "assistant", "content": "ok " * 20}]
            messages.append({"role": "user", "content": "third question " * 20})
            assert await chat(client, gw, messages) == served
