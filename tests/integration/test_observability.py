"""Token metrics and trace context end to end: a small OpenAI-style server on 127.0.0.1 that
streams chat chunks, the gateway in front of it, /metrics and the upstream headers checked."""

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
from prometheus_client.parser import text_string_to_metric_families

from gateway.server import Gateway
from gateway.tracing import parse_traceparent
from tests.helpers import admin, base, running_gateway, wait_until

pytestmark = pytest.mark.timeout(60)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
WORDS = ("Hello", ",", " world", "!")


@dataclass
class LlmServer:
    """OpenAI-style chat completions: streamed (usage chunk when asked for) or whole."""

    name: str
    status: int = 200
    traceparents: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    gated: bool = False
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.traceparents.append(request.headers.get("traceparent", ""))
        body = await request.json()
        if self.status != 200:
            return web.json_response({"error": "busy"}, status=self.status)
        usage = {"prompt_tokens": 9, "completion_tokens": len(WORDS)}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(WORDS)}
            answer = {"model": "tiny", "choices": [{"message": message}], "usage": usage}
            return web.json_response(answer)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_event({"role": "assistant"}))
        for i, word in enumerate(WORDS):
            await response.write(_event({"content": word}))
            if i == 0 and self.gated:
                await self.gate.wait()
        if body.get("stream_options", {}).get("include_usage"):
            chunk = {"model": "tiny", "choices": [], "usage": usage}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def broken(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: {this is not json\n\ndata: [DONE]\n\n")
        await response.write_eof()
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/broken", self.broken)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]


def _event(delta: dict[str, str]) -> bytes:
    chunk = {"model": "tiny", "choices": [{"index": 0, "delta": delta}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


def _config(servers: list[LlmServer], extra: str = "") -> str:
    backends = ", ".join(f"{{url: '{s.url}', name: {s.name}}}" for s in servers)
    return (
        "listen: {host: 127.0.0.1, port: 0}\nadmin: {host: 127.0.0.1, port: 0}\n"
        f"backends: [{backends}]\nhealth_check: {{enabled: false}}\n{extra}"
    )


@asynccontextmanager
async def llm_gateway(
    extra: str = "", **server: object
) -> AsyncIterator[tuple[LlmServer, Gateway]]:
    llm = LlmServer("llm", **server)  # type: ignore[arg-type]
    await llm.start()
    try:
        async with running_gateway(_config([llm], extra)) as gateway:
            yield llm, gateway
    finally:
        assert llm.runner is not None
        await llm.runner.cleanup()


async def _samples(gateway: Gateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{admin(gateway)}/metrics") as response:
            text = await response.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_streamed_and_whole_answers_fill_the_token_metrics() -> None:
    async with llm_gateway() as (_, gateway), aiohttp.ClientSession() as client:
        url = f"{base(gateway)}/v1/chat/completions"
        with_usage = {"model": "tiny", "stream": True, "stream_options": {"include_usage": True}}
        for payload in (with_usage, {"model": "tiny", "stream": True}, {"model": "tiny"}):
            async with client.post(url, json=payload) as response:
                assert response.status == 200
                await response.read()
        samples = await _samples(gateway)
    model = {"backend": "llm", "model": "tiny"}
    assert _value(samples, "tailgate_time_to_first_token_seconds_count", **model) == 3
    assert _value(samples, "tailgate_time_per_output_token_seconds_count", **model) == 2
    completion = {**model, "kind": "completion"}
    usage_tokens = _value(samples, "tailgate_tokens_total", **completion, source="usage")
    assert usage_tokens == 2 * len(WORDS)  # the stream's usage chunk and the whole answer's
    assert _value(samples, "tailgate_tokens_total", **completion, source="events") == len(WORDS)
    prompt = _value(samples, "tailgate_tokens_total", **model, kind="prompt", source="usage")
    assert prompt == 2 * 9
    slo = sum(
        _value(samples, "tailgate_slo_requests_total", **model, result=r) for r in ("met", "missed")
    )
    assert slo == 3


async def test_a_malformed_stream_is_relayed_unchanged_and_counted() -> None:
    async with llm_gateway() as (_, gateway), aiohttp.ClientSession() as client:
        async with client.post(f"{base(gateway)}/v1/broken", json={}) as response:
            body = await response.read()
        samples = await _samples(gateway)
    assert body == b"data: {this is not json\n\ndata: [DONE]\n\n"
    assert (
        _value(samples, "tailgate_unparsed_answers_total", backend="llm", reason="malformed") == 1
    )


async def test_observing_a_stream_never_holds_back_an_event() -> None:
    """The first token reaches the client while the server still waits on a gate only the
    test opens: the observer reads after relaying, never before."""
    async with llm_gateway(gated=True) as (llm, gateway), aiohttp.ClientSession() as client:
        payload = {"model": "tiny", "stream": True}
        async with client.post(f"{base(gateway)}/v1/chat/completions", json=payload) as response:
            await response.content.readuntil(b"\n\n")  # the role-only chunk
            first_token = await response.content.readuntil(b"\n\n")
            assert b'"Hello"' in first_token and not llm.gate.is_set()
            llm.gate.set()
            await response.read()


async def test_an_incoming_trace_continues_upstream_and_lands_in_the_access_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with llm_gateway() as (llm, gateway), aiohttp.ClientSession() as client:
        url = f"{base(gateway)}/v1/chat/completions"
        with caplog.at_level(logging.INFO, logger="tailgate.access"):
            for headers in ({"traceparent": INCOMING}, {}):
                async with client.post(url, json={"model": "tiny"}, headers=headers) as response:
                    await response.read()
    continued, started = (parse_traceparent(v) for v in llm.traceparents)
    assert continued is not None and started is not None
    assert continued.trace_id == TRACE_ID and continued.parent_id != "00f067aa0ba902b7"
    assert started.trace_id != TRACE_ID and started.sampled
    access = [r for r in caplog.records if r.name == "tailgate.access"]
    logged = [json.loads(r.getMessage())["trace_id"] for r in access]
    assert logged == [TRACE_ID, started.trace_id]


async def test_with_tracing_off_a_traceparent_passes_through_untouched() -> None:
    async with llm_gateway("tracing: {enabled: false}\n") as (llm, gateway):
        async with aiohttp.ClientSession() as client:
            url = f"{base(gateway)}/v1/chat/completions"
            for headers in ({"traceparent": INCOMING}, {}):
                async with client.post(url, json={"model": "tiny"}, headers=headers) as response:
                    await response.read()
    assert llm.traceparents == [INCOMING, ""]


@dataclass
class OtlpReceiver:
    """An OTLP/HTTP traces endpoint: decodes each protobuf export into its spans."""

    spans: list[object] = field(default_factory=list)
    port: int = 0

    async def export(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        message = ExportTraceServiceRequest.FromString(await request.read())
        for resource in message.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return web.Response(content_type="application/x-protobuf", body=b"")


async def test_spans_are_exported_over_otlp_with_tries_and_retries() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    receiver = OtlpReceiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.export)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.port = runner.addresses[0][1]
    busy, good = LlmServer("busy", status=503), LlmServer("good")
    await busy.start()
    await good.start()
    extra = (  # round robin: the busy backend is tried first within two requests
        "balancer: {policy: round_robin}\n"
        "retries: {retry_non_idempotent: true, backoff_base: 0s, backoff_max: 0s}\n"
        f"tracing: {{otlp: {{endpoint: 'http://127.0.0.1:{receiver.port}/v1/traces'}}}}\n"
    )
    try:
        async with running_gateway(_config([busy, good], extra)) as gateway:
            async with aiohttp.ClientSession() as client:
                url = f"{base(gateway)}/v1/chat/completions"
                for _ in range(2):  # until the busy one is tried first: a retry follows
                    headers = {"traceparent": INCOMING}
                    async with client.post(url, json={}, headers=headers) as response:
                        assert response.status == 200
                    if busy.traceparents:
                        break
            assert busy.traceparents, "round robin never tried the busy backend first"
            await gateway.stop()  # flushes the batch of spans
        await wait_until(lambda: any(s.events for s in receiver.spans), timeout_s=10)
    finally:
        for server in (busy, good):
            assert server.runner is not None
            await server.runner.cleanup()
        await runner.cleanup()
    retried = next(s for s in receiver.spans if s.events)
    assert retried.trace_id.hex() == TRACE_ID
    assert [e.name for e in retried.events] == ["retry"]
    tries = {s.name: s for s in receiver.spans if s.parent_span_id == retried.span_id}
    outcomes = {name: _attribute(span, "tailgate.outcome") for name, span in tries.items()}
    assert outcomes == {"try busy": "503", "try good": "200"}
    sent = {parse_traceparent(v).parent_id for v in good.traceparents if v}  # type: ignore[union-attr]
    assert tries["try good"].span_id.hex() in sent


def _attribute(span: object, key: str) -> str:
    return next(a.value.string_value for a in span.attributes if a.key == key)  # type: ignore[attr-defined]


@pytest.mark.torch
@pytest.mark.slow
async def test_the_bundled_backends_answers_are_counted_token_for_token() -> None:
    """The gateway's token counts agree with the usage the bundled backend reports."""
    pytest.importorskip("torch")
    from tests.backend.conftest import BackendProcess

    backend = BackendProcess("--preset", "tiny")
    try:
        url = await asyncio.to_thread(backend.wait_ready, 60)
        config = (
            "listen: {host: 127.0.0.1, port: 0}\nadmin: {host: 127.0.0.1, port: 0}\n"
            f"backends: [{{url: '{url}', name: tiny}}]\n"
        )
        async with running_gateway(config) as gateway, aiohttp.ClientSession() as client:
            payload = {
                "model": "tailgate-tiny",
                "messages": [{"role": "user", "content": "count with me"}],
                "max_tokens": 6,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            async with client.post(f"{base(gateway)}/v1/chat/completions", json=payload) as resp:
                lines = [line async for line in resp.content if line.startswith(b"data: {")]
            usage = json.loads(lines[-1][6:])["usage"]
            samples = await _samples(gateway)
    finally:
        backend.stop()
    model = {"backend": "tiny", "model": "tailgate-tiny"}
    completion = {**model, "kind": "completion", "source": "usage"}
    assert _value(samples, "tailgate_tokens_total", **completion) == usage["completion_tokens"]
    prompt = {**model, "kind": "prompt", "source": "usage"}
    assert _value(samples, "tailgate_tokens_total", **prompt) == usage["prompt_tokens"]
    assert _value(samples, "tailgate_time_to_first_token_seconds_count", **model) == 1
    assert _value(samples, "tailgate_time_per_output_token_seconds_count", **model) == 1
