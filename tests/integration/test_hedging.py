"""Hedging and cancellation through a real gateway, against backends that record what they saw:
a hanging backend's try loses to its hedge and sees the disconnect; a client that leaves closes
the upstream connection; a stream broken mid-way ends with an error event, never a cut."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from gateway.server import Gateway
from tests.helpers import base, gateway_yaml, running_gateway, wait_until

pytestmark = pytest.mark.timeout(30)

ROUTE_CONFIG = "balancer: {policy: round_robin}\nhealth_check: {enabled: false}\n"
ROUTE_CONFIG += "headers: {expose_backend: true}\n"


@dataclass
class Backend:
    """An inference backend that can hang, stream slowly or break off, and counts the
    requests it saw end because the gateway went away."""

    name: str
    hang: bool = False
    stream_chunks: int = 3  # chunks of a streamed answer
    chunk_every_s: float = 0.0
    break_after: int | None = None  # close the connection after this many chunks
    stall_first_chunk: bool = False  # a stream's head goes out, its first chunk never
    stall_after_role: bool = False  # a chat stream's role event goes out, its first token never
    stall_after: int | None = None  # a hung engine: this many tokens, then silence, still open
    started: int = 0
    continuations: int = 0
    disconnects: int = 0
    url: str = ""
    runner: web.AppRunner | None = field(default=None, repr=False)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.started += 1
        body = await request.json()
        try:
            if self.hang:
                await asyncio.Event().wait()
            if not body.get("stream"):
                return web.json_response({"backend": self.name, "choices": [{"text": "ok"}]})
            return await self._stream(request, body)
        except (asyncio.CancelledError, ConnectionError):
            self.disconnects += 1
            raise

    async def _stream(self, request: web.Request, body: dict) -> web.StreamResponse:
        """Streams tokens t0 .. t{stream_chunks - 1}, continuing after those already in the
        prompt (completions) or the final assistant message (chat, continue_final_message),
        at most max_tokens of them: the continuation a real server does, in miniature."""
        chat = "messages" in body
        if chat:
            last = body["messages"][-1]
            done_text = last["content"] if body.get("continue_final_message") else ""
        else:
            done_text = body["prompt"].removeprefix("x")
        self.continuations += bool(done_text)
        start = len(done_text.split())
        end = min(self.stream_chunks, start + body.get("max_tokens", self.stream_chunks))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if self.stall_first_chunk:
            await asyncio.Event().wait()
        if chat:
            opening = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
            await response.write(b"data: " + json.dumps(opening).encode() + b"\n\n")
            if self.stall_after_role:  # as vLLM does: the role at once, the token after prefill
                await asyncio.Event().wait()
        for sent, i in enumerate(range(start, end)):
            if self.stall_after is not None and sent == self.stall_after:
                await asyncio.Event().wait()
            if self.break_after is not None and sent == self.break_after:
                assert request.transport is not None
                request.transport.abort()  # a dying pod: no terminating chunk
                return response
            token = f"t{i} "
            choice = {"index": 0, "delta": {"content": token}} if chat else {"text": token}
            event = b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"
            half = len(event) // 2  # events split across writes: the seam must stay whole
            await response.write(event[:half])
            await response.write(event[half:])
            if self.chunk_every_s:
                await asyncio.sleep(self.chunk_every_s)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@asynccontextmanager
async def backends_and_gateway(
    backends: list[Backend], extra: str, access_log: bool = False
) -> AsyncIterator[tuple[list[Backend], Gateway]]:
    for backend in backends:
        app = web.Application()
        app.router.add_post("/{tail:.*}", backend.handle)
        backend.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await backend.runner.setup()
        site = web.TCPSite(backend.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        backend.url = f"http://127.0.0.1:{port}"
    try:
        config = gateway_yaml([b.url for b in backends], extra)
        if access_log:
            config = config.replace("logging: {access_log: false}", "logging: {access_log: true}")
        async with running_gateway(config) as gateway:
            yield backends, gateway
    finally:
        for backend in backends:
            assert backend.runner is not None
            await backend.runner.cleanup()


def hedges(gateway: Gateway, event: str) -> float:
    registry = gateway.runtime.metrics.registry
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "tailgate_hedges_total" and sample.labels["event"] == event:
                total += sample.value
    return total


def in_flight(gateway: Gateway) -> int:
    return sum(e.signals.in_flight for e in gateway.runtime.fleet.endpoints.values())


async def test_a_try_stuck_on_a_hanging_backend_loses_to_its_hedge_and_is_disconnected() -> None:
    stuck, healthy = Backend("stuck", hang=True), Backend("healthy")
    extra = ROUTE_CONFIG + "hedging: {delay: 50ms}\n"
    async with (
        backends_and_gateway([stuck, healthy], extra) as (_, gw),
        aiohttp.ClientSession() as client,
    ):
        for _ in range(2):  # round robin: one of the two first goes to the stuck backend
            async with client.post(f"{base(gw)}/v1/completions", json={"prompt": "x"}) as resp:
                assert resp.status == 200
                assert (await resp.json())["backend"] == "healthy"
        # a slow answer on a busy machine may hedge too; every hedge sent left one loser
        assert hedges(gw, "won") >= 1 and hedges(gw, "cancelled") == hedges(gw, "sent")
        assert in_flight(gw) == 0  # the loser left the in-flight count at once
        assert stuck.started >= 1
        await wait_until(lambda: stuck.disconnects == stuck.started)  # and its backend saw it


async def test_a_post_that_is_not_inference_is_never_hedged() -> None:
    stuck, healthy = Backend("stuck", hang=True), Backend("healthy")
    extra = ROUTE_CONFIG + "hedging: {delay: 50ms}\ntimeouts: {per_try: 300ms}\n"
    async with (
        backends_and_gateway([stuck, healthy], extra) as (_, gw),
        aiohttp.ClientSession() as client,
    ):
        statuses = []
        for _ in range(2):
            async with client.post(f"{base(gw)}/orders", json={}) as resp:
                statuses.append(resp.status)
        assert sorted(statuses) == [200, 504]  # reached the stuck one: not safe to resend
        assert hedges(gw, "sent") == 0 and stuck.started == 1


async def test_a_stream_is_hedged_on_its_first_body_byte() -> None:
    slow, fast = Backend("slow", stall_first_chunk=True), Backend("fast")
    extra = ROUTE_CONFIG + "hedging: {delay: 50ms}\n"
    async with (
        backends_and_gateway([slow, fast], extra) as (_, gw),
        aiohttp.ClientSession() as client,
    ):
        texts = []
        for _ in range(2):
            payload = {"prompt": "x", "stream": True}
            async with client.post(f"{base(gw)}/v1/completions", json=payload) as resp:
                texts.append(await resp.text())
        assert all(t.endswith("data: [DONE]\n\n") and "t2" in t for t in texts)
        assert hedges(gw, "won") >= 1
        await wait_until(lambda: slow.disconnects == slow.started)


async def test_a_chat_stream_is_hedged_on_its_first_token_not_its_opening_role_event() -> None:
    slow, fast = Backend("slow", stall_after_role=True), Backend("fast")
    extra = ROUTE_CONFIG + "hedging: {delay: 50ms}\n"
    payload = {"messages": [{"role": "user", "content": "x"}], "stream": True}
    async with (
        backends_and_gateway([slow, fast], extra) as (_, gw),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client,
    ):
        texts = []
        for _ in range(2):  # round robin: one of the two first goes to the slow backend
            async with client.post(f"{base(gw)}/v1/chat/completions", json=payload) as resp:
                raw = await resp.text()
                assert raw.endswith("data: [DONE]\n\n") and raw.count('"role"') == 1
                texts.append(streamed_text(raw))
        assert texts == ["t0 t1 t2 "] * 2
        assert slow.started >= 1 and hedges(gw, "won") >= 1
        await wait_until(lambda: slow.disconnects == slow.started)


async def test_a_client_that_leaves_mid_stream_closes_the_upstream_connection() -> None:
    endless = Backend("endless", stream_chunks=10_000, chunk_every_s=0.01)
    async with (
        backends_and_gateway([endless], "health_check: {enabled: false}\n") as (_, gw),
        aiohttp.ClientSession() as client,
    ):
        payload = {"prompt": "x", "stream": True}
        async with client.post(f"{base(gw)}/v1/completions", json=payload) as resp:
            assert (await resp.content.readline()).startswith(b"data: ")
            assert in_flight(gw) == 1
        # leaving the block without reading on closes the client connection
        await wait_until(lambda: endless.disconnects == 1)
        await wait_until(lambda: in_flight(gw) == 0)


async def test_a_stream_broken_mid_way_ends_with_an_error_event_and_a_clean_end() -> None:
    dying = Backend("dying", stream_chunks=5, break_after=2)
    async with (
        backends_and_gateway([dying], "health_check: {enabled: false}\n") as (_, gw),
        aiohttp.ClientSession() as client,
    ):
        payload = {"prompt": "x", "stream": True}
        async with client.post(f"{base(gw)}/v1/completions", json=payload) as resp:
            assert resp.status == 200
            text = await resp.text()  # a cut chunked encoding would raise here
        events = [e.removeprefix("data: ") for e in text.strip().split("\n\n")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["type"] == "upstream_reset" and "t1" in events[1]
        metrics = gw.runtime.metrics.registry
        broken = metrics.get_sample_value(
            "tailgate_broken_streams_total", {"route": "default", "result": "error_event"}
        )
        assert broken == 1


PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


def streamed_text(sse: str) -> str:
    """The text of a completions or chat event stream, as a client would assemble it."""
    text = []
    for event in sse.strip().split("\n\n"):
        data = event.removeprefix("data: ")
        if data == "[DONE]":
            continue
        choice = json.loads(data)["choices"][0]
        text.append(choice.get("text") or choice.get("delta", {}).get("content") or "")
    return "".join(text)


def six_token_stream(kind: str) -> dict:
    """A streamed completions or chat request for at most six tokens."""
    payload: dict = {"max_tokens": 6, "stream": True}
    if kind == "chat":
        payload["messages"] = [{"role": "user", "content": "x"}]
    else:
        payload["prompt"] = "x"
    return payload


@pytest.mark.parametrize("kind", ["completions", "chat"])
async def test_a_stream_broken_mid_way_is_continued_on_another_backend(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    dying, healthy = (
        Backend("dying", stream_chunks=6, break_after=2),
        Backend("healthy", stream_chunks=6),
    )
    payload = six_token_stream(kind)
    async with (
        backends_and_gateway([dying, healthy], ROUTE_CONFIG, access_log=True) as (_, gw),
        aiohttp.ClientSession() as client,
    ):
        caplog.set_level(logging.INFO, logger="tailgate.access")
        texts = []
        for _ in range(2):  # round robin: at least one of them starts on the dying backend
            async with client.post(f"{base(gw)}{PATHS[kind]}", json=payload) as resp:
                assert resp.status == 200
                raw = await resp.text()
                assert raw.endswith("data: [DONE]\n\n") and "error" not in raw
                assert raw.count('"role"') <= 1  # one opening event, not one per backend
                texts.append(streamed_text(raw))
        assert texts == ["t0 t1 t2 t3 t4 t5 "] * 2  # the same text as an unbroken stream
        assert dying.started >= 1 and healthy.continuations == dying.started
        metrics = gw.runtime.metrics.registry
        labels = {"route": "default", "result": "resumed"}
        assert metrics.get_sample_value("tailgate_broken_streams_total", labels) == dying.started
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tailgate.access"]
    resumed = [e for e in access if e.get("stream_break") == "resumed"]
    assert len(resumed) == dying.started and all(e["tries"] == 2 for e in resumed)


@pytest.mark.parametrize("kind", ["completions", "chat"])
async def test_a_stream_gone_silent_mid_way_is_continued_on_another_backend(kind: str) -> None:
    """A hung engine keeps its connection open and sends nothing more: after
    timeouts.stream_idle of silence the gateway takes the stream for broken and resumes it."""
    hung, healthy = (
        Backend("hung", stream_chunks=6, stall_after=2),
        Backend("healthy", stream_chunks=6),
    )
    payload = six_token_stream(kind)
    extra = ROUTE_CONFIG + "timeouts: {stream_idle: 300ms}\nhedging: {enabled: false}\n"
    async with (
        backends_and_gateway([hung, healthy], extra) as (_, gw),
        aiohttp.ClientSession() as client,
    ):
        texts = []
        for _ in range(2):  # round robin: one of them starts on the hung backend
            async with client.post(f"{base(gw)}{PATHS[kind]}", json=payload) as resp:
                assert resp.status == 200
                raw = await resp.text()
                assert raw.endswith("data: [DONE]\n\n") and "error" not in raw
                texts.append(streamed_text(raw))
        assert texts == ["t0 t1 t2 t3 t4 t5 "] * 2
        assert hung.started >= 1 and healthy.continuations == hung.started
        await wait_until(lambda: hung.disconnects == hung.started)  # its connections dropped
        labels = {"route": "default", "result": "resumed"}
        resumed = gw.runtime.metrics.registry.get_sample_value(
            "tailgate_broken_streams_total", labels
        )
        assert resumed == hung.started


async def test_a_first_token_that_never_comes_is_a_per_try_timeout_and_retried() -> None:
    """vLLM sends the head and a chat stream's role event before prefill: a backend that then
    hangs is bounded by timeouts.per_try (head to first token), not by the route's total."""
    hung, healthy = Backend("hung", stall_after_role=True), Backend("healthy")
    payload = {"messages": [{"role": "user", "content": "x"}], "stream": True}
    extra = ROUTE_CONFIG + "timeouts: {per_try: 300ms, total: 20s}\nhedging: {enabled: false}\n"
    async with (
        backends_and_gateway([hung, healthy], extra) as (_, gw),
        aiohttp.ClientSession() as client,
    ):
        texts = []
        for _ in range(2):
            async with client.post(f"{base(gw)}{PATHS['chat']}", json=payload) as resp:
                assert resp.status == 200
                raw = await resp.text()
                assert "error" not in raw and raw.count('"role"') <= 1
                texts.append(streamed_text(raw))
        assert texts == ["t0 t1 t2 "] * 2
        assert hung.started >= 1
        await wait_until(lambda: hung.disconnects == hung.started)
