"""Inference-aware routing through a real gateway: stream latency from the first event, a
conversation's turns kept where its prefix is cached (prefix_aware), and that affinity let go
of a backend that stops answering."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest

from tests.helpers import (
    admin,
    base,
    gateway_yaml,
    get_json,
    running_gateway,
    start_pod,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


EVENTS = (b'data: {"choices": [{"text": "t"}]}\n\n', b"data: [DONE]\n\n")
ROLE_EVENT = b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'


def eager_head_server(
    first_event_after_s: float, role_first: bool = False
) -> Callable[..., Awaitable[None]]:
    """A backend that sends a stream's head at once and its first event late, as vLLM and
    SGLang do (the head goes out before prefill); ``role_first``: a chat stream's role-only
    opening event goes out with the head too. Raw HTTP/1.1: aiohttp's own server would
    hold the head back until the first body write."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                if role_first:
                    writer.write(b"%x\r\n%s\r\n" % (len(ROLE_EVENT), ROLE_EVENT))
                await writer.drain()
                await asyncio.sleep(first_event_after_s)  # the prefill this backend takes
                for event in EVENTS:
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return serve


@asynccontextmanager
async def backends(*delays_s: float, role_first: bool = False) -> AsyncIterator[list[str]]:
    servers = []
    try:
        for delay_s in delays_s:
            serve = eager_head_server(delay_s, role_first)
            servers.append(await asyncio.start_server(serve, "127.0.0.1", 0))
        yield [f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


def gateway_config(urls: list[str], names: list[str], extra: str = "") -> str:
    """The gateway in front of ``urls`` as backends ``names``, saying who answered."""
    lines = ["listen: {host: 127.0.0.1, port: 0}", "admin: {host: 127.0.0.1, port: 0}"]
    lines.append("backends:")
    lines += [f"  - {{url: '{u}', name: {n}}}" for u, n in zip(urls, names, strict=True)]
    lines += ["headers: {expose_backend: true}", "logging: {access_log: false}"]
    return "\n".join(lines) + "\n" + extra


async def chat(client: aiohttp.ClientSession, url: str, messages: list[dict[str, str]]) -> str:
    body = {"model": "m", "stream": True, "messages": messages}
    async with client.post(f"{url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        await resp.read()
        return resp.headers["X-Tailgate-Backend"]


async def test_a_stream_whose_first_event_is_late_is_avoided() -> None:
    """Both backends answer the head at once; the slow one's first event comes 30x later.
    Timed by the head, the two look alike and share the traffic; timed by the first event,
    the slow one is learnt from its first answers and left alone."""
    hello = [{"role": "user", "content": "hi"}]
    async with backends(0.3, 0.01) as urls:
        async with running_gateway(gateway_config(urls, ["slow", "fast"])) as gw:
            async with aiohttp.ClientSession() as client:
                # four at once: the queue term spreads them, so both backends are measured
                warm = await asyncio.gather(*(chat(client, base(gw), hello) for _ in range(4)))
                assert set(warm) == {"slow", "fast"}
                got = Counter([await chat(client, base(gw), hello) for _ in range(20)])
    assert got["slow"] <= 3 and got["fast"] >= 17


async def test_time_to_first_token_is_measured_past_a_role_only_opening_event() -> None:
    """The role event comes with the head, the token 0.2 s later: the TTFT the backend is
    fitted with (``/admin/backends``) is the token's, not the role event's ~0."""
    hello = [{"role": "user", "content": "hi"}]
    async with backends(0.2, role_first=True) as urls:
        async with running_gateway(gateway_config(urls, ["late"])) as gw:
            async with aiohttp.ClientSession() as client:
                for _ in range(3):
                    await chat(client, base(gw), hello)
            state = await get_json(f"{admin(gw)}/admin/backends")
    signals = state["groups"]["default"]["backends"][0]["signals"]
    assert signals["ttft_base_s"] + signals["ttft_s_per_token"] * 10 >= 0.15


async def test_prefix_aware_keeps_a_conversation_where_its_prefix_is_cached() -> None:
    extra = "balancer: {policy: prefix_aware}\n"
    system = {"role": "system", "content": "You are a careful assistant. " * 60}
    async with backends(0.01, 0.01, 0.01, 0.01) as urls:
        async with running_gateway(gateway_config(urls, ["a", "b", "c", "d"], extra)) as gw:
            async with aiohttp.ClientSession() as client:
                homes = []
                for conversation in range(4):
                    messages = [system, {"role": "user", "content": f"topic {conversation} " * 80}]
                    first = await chat(client, base(gw), messages)
                    for turn in range(3):
                        messages = [*messages, {"role": "assistant", "content": "ok " * 40}]
                        messages.append({"role": "user", "content": f"turn {turn} " * 40})
                        assert await chat(client, base(gw), messages) == first
                    homes.append(first)
    assert len(homes) == 4


async def test_prefix_aware_lets_go_of_a_home_that_stops_answering() -> None:
    """Every request shares one prompt, so one home takes them all; when it hangs, the next
    requests with that prompt go elsewhere: at most two more tries reach it (the one that
    finds it hung, hedged or timed out, and perhaps one random draw)."""
    pods = [await start_pod(name, service_s=0.005, dist="fixed") for name in ("a", "b", "c")]
    extra = (
        "balancer: {policy: prefix_aware}\n"
        "headers: {expose_backend: true}\n"
        "timeouts: {per_try: 2s, total: 10s}\n"
    )
    body = {"model": "m", "prompt": "You are a careful assistant. " * 60, "max_tokens": 4}
    try:
        async with running_gateway(gateway_yaml(pods, extra)) as gw:
            async with aiohttp.ClientSession() as client:

                async def complete(prompt: object = body["prompt"]) -> str:
                    payload = {**body, "prompt": prompt}
                    async with client.post(f"{base(gw)}/v1/completions", json=payload) as resp:
                        assert resp.status == 200
                        await resp.read()
                        return resp.headers["X-Tailgate-Backend"]

                # every pod measured (other prompts have other homes), then the hot prompt
                for i in range(60):
                    if all(pod.state.served for pod in pods):
                        break
                    await complete(f"warm-up {i} " * 40)
                assert all(pod.state.served for pod in pods)
                answered = Counter([await complete() for _ in range(10)])
                home_name = answered.most_common(1)[0][0]
                home = next(pod for pod in pods if pod.name == home_name)
                home.state.faults.hang = True
                reached_before = home.state.served + home.state.running + home.state.waiting
                after = [await complete() for _ in range(10)]
                await wait_until(lambda: home.state.running == 0 and home.state.waiting == 0)
                reached = home.state.served - reached_before
    finally:
        for pod in pods:
            await pod.runner.cleanup()
    assert home_name not in after
    assert reached <= 2
