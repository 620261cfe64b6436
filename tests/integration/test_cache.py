"""The response cache through a real gateway and a real backend on 127.0.0.1: deterministic
requests only, tenants kept apart, streams replayed event by event, bypass, coalescing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from gateway.cache.key import cache_key
from gateway.config import parse_config
from gateway.server import Gateway
from gateway.tenants.identity import ANONYMOUS
from tests.helpers import admin, base, gateway_yaml, get_json, running_gateway, wait_until
from tests.integration.cache_backend import CountingBackend, counting_backend

pytestmark = pytest.mark.timeout(60)

GREEDY = {"model": "m", "prompt": "hello", "temperature": 0, "max_tokens": 8}
COMPLETIONS = "/v1/completions"


@asynccontextmanager
async def cached(
    extra: str = "cache: {enabled: true}\n",
) -> AsyncIterator[tuple[CountingBackend, Gateway, aiohttp.ClientSession]]:
    async with (
        counting_backend() as backend,
        running_gateway(gateway_yaml([backend.url], extra)) as gw,
        aiohttp.ClientSession() as client,
    ):
        yield backend, gw, client


async def post(
    client: aiohttp.ClientSession,
    gw: Gateway,
    payload: dict[str, Any] | bytes,
    headers: dict[str, str] | None = None,
    path: str = COMPLETIONS,
) -> tuple[int, str | None, bytes, aiohttp.ClientResponse]:
    kwargs: dict[str, Any] = {"data": payload} if isinstance(payload, bytes) else {"json": payload}
    async with client.post(f"{base(gw)}{path}", headers=headers, **kwargs) as resp:
        body = await resp.read()
        return resp.status, resp.headers.get("X-Tailgate-Cache"), body, resp


async def test_a_repeated_deterministic_request_is_answered_from_the_cache() -> None:
    async with cached() as (backend, gw, client):
        status, verdict, first, _ = await post(client, gw, GREEDY)
        assert (status, verdict) == (200, "miss")
        # the same request, keys reordered, spaced out, with a field that changes nothing
        same = b'{ "max_tokens": 8, "temperature": 0.0,\n "prompt": "hello", "model": "m",'
        same += b' "user": "u" }'
        status, verdict, again, resp = await post(client, gw, same)
        assert (status, verdict) == (200, "hit")
        assert again == first and backend.served == 1
        assert resp.headers["X-Request-ID"]
        assert resp.headers["Content-Type"].startswith("application/json")


async def test_sampled_requests_are_never_cached() -> None:
    async with cached() as (backend, gw, client):
        for payload in ({**GREEDY, "temperature": 0.7}, {**GREEDY, "n": 2}, {"prompt": "x"}):
            for _ in range(2):
                status, verdict, _, _ = await post(client, gw, payload)
                assert (status, verdict) == (200, "bypass")
        assert backend.served == 6


async def test_one_tenant_never_gets_anothers_answer() -> None:
    async with cached() as (backend, gw, client):
        assert (await post(client, gw, GREEDY, {"X-Tenant": "a"}))[1] == "miss"
        assert (await post(client, gw, GREEDY, {"X-Tenant": "b"}))[1] == "miss"
        assert (await post(client, gw, GREEDY))[1] == "miss"  # anonymous is a tenant of its own
        assert (await post(client, gw, GREEDY, {"X-Tenant": "a"}))[1] == "hit"
        assert backend.served == 3


async def test_a_shared_cache_serves_every_tenant() -> None:
    async with cached("cache: {enabled: true, shared: true}\n") as (backend, gw, client):
        assert (await post(client, gw, GREEDY, {"X-Tenant": "a"}))[1] == "miss"
        assert (await post(client, gw, GREEDY, {"X-Tenant": "b"}))[1] == "hit"
        assert backend.served == 1


async def test_a_cached_stream_replays_the_same_events_as_a_stream() -> None:
    streamed = {**GREEDY, "stream": True}
    async with cached() as (backend, gw, client):
        runs = []
        for expected in ("miss", "hit"):
            async with client.post(f"{base(gw)}{COMPLETIONS}", json=streamed) as resp:
                assert resp.headers["X-Tailgate-Cache"] == expected
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                assert "Content-Length" not in resp.headers  # still a stream
                runs.append([line async for line in resp.content])
        assert runs[0] == runs[1]
        assert runs[0][-2:] == [b"data: [DONE]\n", b"\n"]
        assert backend.served == 1
        # the whole answer to the same request is not rebuilt from the stream's events
        status, verdict, body, _ = await post(client, gw, GREEDY)
        assert (status, verdict) == (200, "miss") and body.startswith(b"{")


async def test_no_store_bypasses_and_no_cache_refreshes() -> None:
    async with cached() as (backend, gw, client):
        _, verdict, _, _ = await post(client, gw, GREEDY, {"Cache-Control": "no-store"})
        assert verdict == "bypass"
        assert (await post(client, gw, GREEDY))[1] == "miss"  # no-store kept nothing
        _, verdict, fresh, _ = await post(client, gw, GREEDY, {"Cache-Control": "no-cache"})
        assert verdict == "bypass" and b'"n": 3' in fresh
        _, verdict, body, _ = await post(client, gw, GREEDY)
        assert verdict == "hit" and body == fresh  # the fresh answer replaced the entry


async def test_a_route_overrides_the_default() -> None:
    extra = (
        "routes:\n"
        "  - {name: cached, match: {path_prefix: /v1/completions}, groups: [{name: default}],"
        " cache: true}\n"
    )
    async with cached(extra) as (backend, gw, client):
        assert (await post(client, gw, GREEDY))[1] == "miss"
        assert (await post(client, gw, GREEDY))[1] == "hit"
        chat = await post(client, gw, GREEDY, path="/v1/chat/completions")
        assert chat[0] == 200 and chat[1] is None  # the cache is off there: no header at all
        assert backend.served == 2


async def test_failed_answers_are_not_kept() -> None:
    async with cached() as (backend, gw, client):
        backend.fail_next = 2  # the try and its retry (500 is retried once by default)
        assert (await post(client, gw, GREEDY))[0] == 500
        status, verdict, _, _ = await post(client, gw, GREEDY)
        assert (status, verdict) == (200, "miss") and backend.served == 3


async def test_a_stream_that_breaks_off_is_not_kept() -> None:
    streamed = {**GREEDY, "stream": True}
    async with cached() as (backend, gw, client):
        backend.break_streams = True
        async with client.post(f"{base(gw)}{COMPLETIONS}", json=streamed) as resp:
            assert resp.headers["X-Tailgate-Cache"] == "miss"
            broken = await resp.read()  # resumed once, broken again: ends with an error event
        assert b'"error"' in broken and broken.endswith(b"data: [DONE]\n\n")
        backend.break_streams = False
        async with client.post(f"{base(gw)}{COMPLETIONS}", json=streamed) as resp:
            assert resp.headers["X-Tailgate-Cache"] == "miss"  # the broken one was not kept
            assert (await resp.read()).endswith(b"data: [DONE]\n\n")
        assert backend.served == 3  # the try, its continuation, the fresh request


async def test_an_answer_its_backend_marks_no_store_is_not_kept() -> None:
    async with cached() as (backend, gw, client):
        backend.cache_control = "private, max-age=0"
        assert (await post(client, gw, GREEDY))[1] == "miss"
        assert (await post(client, gw, GREEDY))[1] == "miss"
        assert backend.served == 2


async def test_identical_concurrent_requests_go_upstream_once() -> None:
    async with cached() as (backend, gw, client):
        backend.gate.clear()
        requests = [asyncio.create_task(post(client, gw, GREEDY)) for _ in range(5)]
        await wait_until(lambda: backend.arrived == 1)
        key = cache_key("default", COMPLETIONS, ANONYMOUS, GREEDY).digest
        await wait_until(lambda: gw.runtime.cache.flights.waiters(key) == 4)
        backend.gate.set()
        answers = await asyncio.gather(*requests)
        assert {(status, body) for status, _, body, _ in answers} == {(200, answers[0][2])}
        assert sorted(verdict or "" for _, verdict, _, _ in answers) == ["hit"] * 4 + ["miss"]
        assert backend.served == 1
        text = await _metrics(gw)
        assert 'tailgate_cache_coalesced_total{route="default"} 4.0' in text


async def test_when_the_first_fails_each_waiter_goes_on_alone() -> None:
    no_retry = "cache: {enabled: true}\nretries: {attempts: 1}\n"  # the first's 500 stands
    async with cached(no_retry) as (backend, gw, client):
        backend.gate.clear()
        backend.fail_next = 1
        first = asyncio.create_task(post(client, gw, GREEDY))
        await wait_until(lambda: backend.arrived == 1)
        followers = [asyncio.create_task(post(client, gw, GREEDY)) for _ in range(2)]
        key = cache_key("default", COMPLETIONS, ANONYMOUS, GREEDY).digest
        await wait_until(lambda: gw.runtime.cache.flights.waiters(key) == 2)
        backend.gate.set()
        assert (await first)[0] == 500
        for status, verdict, _, _ in await asyncio.gather(*followers):
            assert (status, verdict) == (200, "miss")
        assert backend.served == 3


async def test_a_waiter_is_bounded_by_the_route_timeout() -> None:
    extra = "cache: {enabled: true}\ntimeouts: {per_try: 200ms, total: 300ms}\n"
    async with cached(extra) as (backend, gw, client):
        backend.gate.clear()
        requests = [asyncio.create_task(post(client, gw, GREEDY)) for _ in range(2)]
        statuses = sorted(status for status, _, _, _ in await asyncio.gather(*requests))
        assert statuses == [504, 504]
        assert len(gw.runtime.cache.flights) == 0  # the leader's flight was released


async def test_admin_and_metrics_show_the_cache() -> None:
    async with cached() as (_, gw, client):
        await post(client, gw, GREEDY)
        await post(client, gw, GREEDY)
        state = await get_json(f"{admin(gw)}/admin/cache")
        assert state["enabled"] is True and state["entries"] == 1 and state["bytes"] > 0
        text = await _metrics(gw)
        assert 'tailgate_cache_requests_total{result="hit",route="default"} 1.0' in text
        assert 'tailgate_cache_requests_total{result="miss",route="default"} 1.0' in text
        assert f"tailgate_cache_bytes {float(state['bytes'])}" in text
        assert "tailgate_cache_entries 1.0" in text


async def test_bounds_evict_and_refuse_large_answers() -> None:
    async with cached("cache: {enabled: true, max_entries: 1}\n") as (backend, gw, client):
        await post(client, gw, GREEDY)
        await post(client, gw, {**GREEDY, "prompt": "other"})
        assert (await post(client, gw, GREEDY))[1] == "miss"  # pushed out by "other"
        assert 'tailgate_cache_evictions_total{reason="size"}' in await _metrics(gw)
    async with cached("cache: {enabled: true, max_entry_bytes: 300}\n") as (backend, gw, client):
        assert (await post(client, gw, GREEDY))[1] == "miss"
        assert (await post(client, gw, GREEDY))[1] == "miss"  # relayed, never kept
        assert backend.served == 2


async def test_a_reload_applies_new_limits_and_keeps_what_fits() -> None:
    async with cached() as (backend, gw, client):
        await post(client, gw, GREEDY)
        await post(client, gw, {**GREEDY, "prompt": "other"})
        assert (await get_json(f"{admin(gw)}/admin/cache"))["entries"] == 2
        smaller = gateway_yaml([backend.url], "cache: {enabled: true, max_entries: 1}\n")
        await gw.apply(parse_config(smaller))
        state = await get_json(f"{admin(gw)}/admin/cache")
        assert (state["entries"], state["max_entries"]) == (1, 1)
        assert (await post(client, gw, {**GREEDY, "prompt": "other"}))[1] == "hit"  # the newest


async def _metrics(gw: Gateway) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{admin(gw)}/metrics") as resp:
        return await resp.text()
