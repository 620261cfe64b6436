"""Locust users for tailgate's OpenAI-style endpoints, for those who prefer Locust's UI.

    pip install -e '.[locust]'
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 \
        --headless --users 20 --spawn-rate 5 --run-time 1m

Locust is not needed by tailgate and this file is not run in CI. Locust users are a *closed*
loop (each waits for its answer), so queueing lowers the send rate instead of showing as
latency; ``python -m loadtests`` is the open-loop measurement. Most users send short
completions, some chat requests and a few model listings; one in ten streams chat.

Locust times a streamed request only to its response head, which vLLM-style servers send at
once, so the streaming user reports two entries of its own: ``TTFT`` (the request until the
first event that carries content) and ``STREAM`` (the request until ``[DONE]``).
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from locust import FastHttpUser, HttpUser, between, task

MODEL = "tailgate-tiny"
PROMPTS = ("Hello", "Summarise the plot of Hamlet.", "Write a haiku about queues.")
STREAM_PATH = "/v1/chat/completions"


def _chat(max_tokens: int, stream: bool = False) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def event_text(event: dict[str, Any]) -> str:
    """The generated text in one streamed event: a chat delta's content or a completion's text."""
    choices = event.get("choices") or [{}]
    choice = choices[0]
    delta = choice.get("delta") or {}
    return str(delta.get("content") or choice.get("text") or "")


class InferenceUser(FastHttpUser):
    weight = 9
    wait_time = between(0.05, 0.2)

    @task(6)
    def completion(self) -> None:
        body = {"model": MODEL, "prompt": random.choice(PROMPTS), "max_tokens": 16}
        self.client.post("/v1/completions", json=body, name="/v1/completions")

    @task(3)
    def chat(self) -> None:
        self.client.post("/v1/chat/completions", json=_chat(32), name="/v1/chat/completions")

    @task(1)
    def models(self) -> None:
        self.client.get("/v1/models", name="/v1/models")


class StreamingUser(HttpUser):
    """Streamed chat, read event by event as it arrives (requests' client, which can)."""

    weight = 1
    wait_time = between(0.05, 0.2)

    @task
    def streamed_chat(self) -> None:
        name = f"{STREAM_PATH} (stream)"
        start = time.perf_counter()
        first_content_s: float | None = None
        done = False
        with self.client.post(
            STREAM_PATH, json=_chat(32, stream=True), name=f"{name}: head",
            stream=True, catch_response=True,
        ) as resp:  # fmt: skip
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return
            for line in resp.iter_lines(chunk_size=None):  # None: each chunk as it arrives
                if not line.startswith(b"data: "):
                    continue
                data = line[len(b"data: ") :]
                if data == b"[DONE]":
                    done = True
                    break
                if first_content_s is None and event_text(json.loads(data)):
                    first_content_s = time.perf_counter() - start
            stream_s = time.perf_counter() - start
            if not done or first_content_s is None:
                resp.failure("stream ended without content or without [DONE]")
                return
            resp.success()
        self._report("TTFT", name, first_content_s)
        self._report("STREAM", name, stream_s)

    def _report(self, kind: str, name: str, seconds: float) -> None:
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=seconds * 1000,  # Locust's unit: milliseconds
            response_length=0,
            exception=None,
            context={},
        )
