"""Locust users for tailgate's OpenAI-style endpoints, for those who prefer Locust's UI.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080

Locust is not a dependency of tailgate and this file is not run in CI. Note that Locust users
are a *closed* loop (each waits for its answer), so queueing lowers the send rate instead of
showing as latency; ``python -m loadtests`` is the open-loop measurement. The mix below sends
mostly short completions, some chat requests and a few streamed ones.
"""

from __future__ import annotations

import json
import random

from locust import FastHttpUser, between, task

MODEL = "tailgate-tiny"
PROMPTS = ("Hello", "Summarise the plot of Hamlet.", "Write a haiku about queues.")


class InferenceUser(FastHttpUser):
    wait_time = between(0.05, 0.2)

    @task(6)
    def completion(self) -> None:
        body = {"model": MODEL, "prompt": random.choice(PROMPTS), "max_tokens": 16}
        self.client.post("/v1/completions", json=body, name="/v1/completions")

    @task(3)
    def chat(self) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
            "max_tokens": 32,
        }
        self.client.post("/v1/chat/completions", json=body, name="/v1/chat/completions")

    @task(1)
    def streamed_chat(self) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
            "max_tokens": 32,
            "stream": True,
        }
        with self.client.post(
            "/v1/chat/completions", json=body, name="/v1/chat/completions (stream)",
            stream=True, catch_response=True,
        ) as resp:  # fmt: skip
            text = resp.text or ""
            events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
            if resp.status_code != 200 or not events or events[-1] != "[DONE]":
                resp.failure(f"bad stream: status {resp.status_code}, {len(events)} events")
                return
            for event in events[:-1]:
                json.loads(event)  # every event must be JSON
            resp.success()

    @task(1)
    def models(self) -> None:
        self.client.get("/v1/models", name="/v1/models")
