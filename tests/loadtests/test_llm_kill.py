"""The kill-mid-stream benchmark's judge: an emulated pod's whole stream is "ok" word for word,
and every way of losing a stream is told apart."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from loadtests.llm.costs import EngineCosts
from loadtests.llm.kill import Stream, expected_text, stream_chat
from loadtests.llm.pod import build_app

pytestmark = pytest.mark.timeout(30)

FAST = EngineCosts(step_s=0.001, decode_per_seq_s=0.0, prefill_per_token_s=0.0, kv_blocks=512)
MESSAGES = [{"role": "system", "content": "s0 s1 s2"}, {"role": "user", "content": "u0 u1"}]


@pytest.fixture
async def pod_url() -> AsyncIterator[str]:
    runner = web.AppRunner(build_app(FAST), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1/chat/completions"
    await runner.cleanup()


async def test_an_unbroken_stream_is_ok_and_says_the_expected_words(pod_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        stream = await stream_chat(http, pod_url, MESSAGES, 12)
    assert stream.verdict == "ok"
    assert stream.text == expected_text(MESSAGES, 12) and len(stream.text.split()) == 12


async def test_a_pod_that_refuses_is_a_failure_before_the_stream(pod_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        stream = await stream_chat(http, pod_url, [], 0)  # max_tokens 0: a 400
    assert stream.status == 400 and stream.verdict == "failed"


def test_every_way_of_losing_a_stream_has_its_verdict() -> None:
    whole = {"status": 200, "expected": " w1 w2"}
    assert Stream(**whole, done=True, text=" w1 w2").verdict == "ok"
    assert Stream(**whole, done=True, text=" w1 w1 w2").verdict == "wrong_text"
    assert Stream(**whole, done=False, text=" w1").verdict == "broken"
    assert Stream(**whole, done=True, error_event=True, text=" w1").verdict == "error_event"
