"""The emulated LLM pod over real HTTP: caching, KV waits, streaming shape, usage, aborts."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from loadtests.llm.costs import EngineCosts
from loadtests.llm.pod import ENGINE, build_app
from loadtests.llm.tokens import chat_tokens
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(30)

# A step of 2 ms and a prefill of 0.5 ms per token: a 480-token prompt costs ~240 ms
# uncached and one block's worth when its prefix is cached.
FAST = EngineCosts(step_s=0.002, decode_per_seq_s=0.0, prefill_per_token_s=0.0005, kv_blocks=512)
SYSTEM = " ".join(f"s{i}" for i in range(480))


class PodClient:
    def __init__(self, session: aiohttp.ClientSession, url: str, app: web.Application) -> None:
        self.session, self.url, self.engine = session, url, app[ENGINE]

    async def stream(
        self, body: dict[str, Any], path: str = "/v1/chat/completions"
    ) -> dict[str, Any]:
        """Send a streamed request; return when the head came, the first content event came
        (seconds after sending), the events and the usage event."""
        sent = time.perf_counter()
        out: dict[str, Any] = {"events": [], "usage": None, "first_token_s": None}
        async with self.session.post(self.url + path, json={**body, "stream": True}) as resp:
            out["status"], out["head_s"] = resp.status, time.perf_counter() - sent
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    out["done"] = True
                    break
                event = json.loads(line[6:])
                if event.get("usage"):
                    out["usage"] = event["usage"]
                    continue
                choice = event["choices"][0]
                text = choice.get("text", choice.get("delta", {}).get("content", ""))
                if text and out["first_token_s"] is None:
                    out["first_token_s"] = time.perf_counter() - sent
                out["events"].append(text)
        out["end"] = time.perf_counter()
        return out

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(self.url + "/_stats") as resp:
            return dict(await resp.json())

    async def control(self, change: dict[str, object]) -> None:
        async with self.session.post(self.url + "/_control", json=change) as resp:
            assert resp.status == 200, await resp.text()


@pytest.fixture
async def pod(request: pytest.FixtureRequest) -> AsyncIterator[PodClient]:
    costs = getattr(request, "param", FAST)
    app = build_app(costs)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        yield PodClient(session, f"http://127.0.0.1:{port}", app)
    await runner.cleanup()


def _chat(user: str, max_tokens: int = 4) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    return {
        "model": "m",
        "messages": messages,
        "max_tokens": max_tokens,
        "stream_options": {"include_usage": True},
    }


async def test_a_repeated_prefix_is_a_cache_hit_and_its_first_token_comes_sooner(
    pod: PodClient,
) -> None:
    cold = await pod.stream(_chat("first question"))
    warm = await pod.stream(_chat("second question"))
    assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert warm["usage"]["prompt_tokens_details"]["cached_tokens"] == 480  # 30 full blocks
    assert warm["first_token_s"] < cold["first_token_s"] / 2  # ~10 ms against ~240 ms
    stats = await pod.stats()
    assert stats["prefix_hits_tokens"] == 480
    assert stats["prefix_queries_tokens"] == 2 * warm["usage"]["prompt_tokens"]


async def test_the_next_turn_hits_the_answer_the_pod_generated(pod: PodClient) -> None:
    first = await pod.stream(_chat("tell me", max_tokens=40))
    answer = "".join(first["events"])
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "tell me"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "more"},
    ]
    second = await pod.stream(
        {"messages": messages, "max_tokens": 2, "stream_options": {"include_usage": True}}
    )
    history = len(chat_tokens(messages[:2])) + 40  # the first prompt and its answer
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == history // 16 * 16


SMALL_KV = EngineCosts(step_s=0.01, decode_per_seq_s=0.0, prefill_per_token_s=0.0, kv_blocks=10)


@pytest.mark.parametrize("pod", [SMALL_KV], indirect=True)
async def test_a_full_kv_cache_makes_a_request_wait(pod: PodClient) -> None:
    import asyncio

    big = {"prompt": " ".join(f"a{i}" for i in range(100)), "max_tokens": 40}  # 9 of 10 blocks
    small = {"prompt": " ".join(f"b{i}" for i in range(40)), "max_tokens": 8}  # 3 blocks
    first = asyncio.create_task(pod.stream(big, "/v1/completions"))
    await wait_until(lambda: len(pod.engine.running) == 1)
    second = asyncio.create_task(pod.stream(small, "/v1/completions"))
    await wait_until(lambda: len(pod.engine.waiting) == 1)
    assert len(pod.engine.running) == 1 and pod.engine.kv_usage() == 0.9
    a, b = await first, await second
    assert len(a["events"]) == 40 and len(b["events"]) == 8
    assert b["end"] > a["end"]  # it ran only once the first had given its blocks back


@pytest.mark.parametrize("pod", [SMALL_KV], indirect=True)
async def test_a_request_that_can_never_fit_is_refused_with_a_400(pod: PodClient) -> None:
    body = {"prompt": " ".join(f"a{i}" for i in range(200)), "max_tokens": 10}
    async with pod.session.post(pod.url + "/v1/completions", json=body) as resp:
        assert resp.status == 400
        assert "exceed the KV cache" in (await resp.json())["error"]["message"]


async def test_the_head_comes_before_the_first_token(pod: PodClient) -> None:
    await pod.control({"hang": True})  # the engine takes no step
    async with pod.session.post(
        pod.url + "/v1/completions", json={"prompt": "hi there", "max_tokens": 3, "stream": True}
    ) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        assert pod.engine.counters.generation_tokens == 0  # head out, nothing generated
        await pod.control({"hang": False})
        body = (await resp.read()).decode()
    texts = [
        json.loads(line[6:])["choices"][0]["text"]
        for line in body.split("\n\n")
        if line.startswith("data: {")
    ]
    assert len(texts) == 3 and body.endswith("data: [DONE]\n\n")


async def test_usage_counts_prompt_and_completion_tokens(pod: PodClient) -> None:
    body = {"prompt": "one two three four five", "max_completion_tokens": 7}
    async with pod.session.post(pod.url + "/v1/completions", json=body) as resp:
        whole = await resp.json()
    assert whole["usage"]["prompt_tokens"] == 5 and whole["usage"]["completion_tokens"] == 7
    assert len(whole["choices"][0]["text"].split()) == 7
    assert whole["choices"][0]["finish_reason"] == "length"
    streamed = await pod.stream(
        {
            "prompt": "one two three four five",
            "max_tokens": 6,
            "stream_options": {"include_usage": True},
        },
        "/v1/completions",
    )
    assert len(streamed["events"]) == 6 and streamed["done"]
    assert streamed["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 6,
        "total_tokens": 11,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    chat = await pod.stream({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert chat["usage"] is None and len([e for e in chat["events"] if e]) == 3


async def test_a_client_that_goes_away_aborts_its_sequence(pod: PodClient) -> None:
    body = {"prompt": "go on forever", "max_tokens": 5000, "stream": True}
    async with pod.session.post(pod.url + "/v1/completions", json=body) as resp:
        assert resp.status == 200
        await resp.content.readline()
        resp.close()  # drop the connection mid-stream
    await wait_until(lambda: pod.engine.counters.aborted == 1)
    assert pod.engine.running == [] and pod.engine.kv_usage() == 0
    async with pod.session.get(pod.url + "/metrics") as resp:
        text = await resp.text()
    assert 'vllm:request_success_total{finished_reason="abort",model_name=' in text


async def test_metrics_carry_vllm_names(pod: PodClient) -> None:
    await pod.stream(_chat("hello"))
    async with pod.session.get(pod.url + "/metrics") as resp:
        text = await resp.text()
    for name in (
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:cache_config_info",
    ):
        assert f"\n{name}{{" in text, name
    assert 'block_size="16"' in text and 'num_gpu_blocks="512"' in text


async def test_health_models_and_bad_input(pod: PodClient) -> None:
    async with pod.session.get(pod.url + "/health") as resp:
        assert resp.status == 200
    async with pod.session.get(pod.url + "/v1/models") as resp:
        assert (await resp.json())["data"][0]["id"] == "emulated-llama-3.1-8b"
    bad = (b"not json", b'{"prompt": 3}', b'{"prompt": " "}', b'{"prompt": "x", "max_tokens": 0}')
    for body in bad:
        async with pod.session.post(pod.url + "/v1/completions", data=body) as resp:
            assert resp.status == 400 and "error" in await resp.json()
    async with pod.session.post(pod.url + "/_control", json={"nope": 1}) as resp:
        assert resp.status == 400


async def test_an_error_rate_of_one_answers_every_request_with_a_500(pod: PodClient) -> None:
    await pod.control({"error_rate": 1.0})
    async with pod.session.post(pod.url + "/v1/completions", json={"prompt": "x"}) as resp:
        assert resp.status == 500 and (await resp.json())["error"]["type"] == "server_error"


async def test_a_continued_final_message_goes_on_with_the_same_words(pod: PodClient) -> None:
    whole = await pod.stream(_chat("continue me", max_tokens=6))
    words = [text for text in whole["events"] if text]  # past the opening role event
    head = "".join(words[:2])
    continued = _chat("continue me", max_tokens=4)
    continued["messages"] = [*continued["messages"], {"role": "assistant", "content": head}]
    continued.update(continue_final_message=True, add_generation_prompt=False)
    rest = await pod.stream(continued)
    assert rest["done"] and head + "".join(rest["events"]) == "".join(words)
