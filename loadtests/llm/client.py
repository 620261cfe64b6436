"""The streaming client: sends a planned workload and times each answer as a user sees it.

Time to first token (TTFT) is taken at the first event that carries content, never at the
response head (vLLM and SGLang send the head at once, so the head says nothing of the queue
or the prefill). Time per output token (TPOT) is the rest of the stream divided by the
tokens after the first. Clocks are ``time.perf_counter``.

Lag is the generator's honesty check, as in :mod:`loadtests.openloop`: how late a request
left against its due time (a session's start, or its previous answer plus the think time).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp

from loadtests.llm.workloads import Session
from loadtests.openloop import CONN_ERROR, TIMEOUT

TRUNCATED = -3  # the stream ended (or stalled past the timeout) without [DONE]
MODEL = "emulated-llama-3.1-8b"

Event = tuple[float, Callable[[], Awaitable[object]]]


@dataclass
class Outcome:
    """One request as the client saw it; ``status`` is HTTP's or one of the codes above."""

    session: int
    turn: int
    due_s: float  # from the run's start
    lag_s: float = 0.0
    status: int = 0
    ttft_s: float = math.inf
    e2e_s: float = math.inf
    output_tokens: int = 0
    text: str = ""
    served_by: str = ""  # the first event's system_fingerprint: the pod that answered

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def tpot_s(self) -> float:
        if not self.ok or self.output_tokens < 2:
            return math.nan
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


def _content(event: dict[str, object]) -> str:
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return str(delta.get("content") or "")
    return str(choice.get("text") or "")


async def stream_chat(
    http: aiohttp.ClientSession,
    url: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    timeout_s: float,
    outcome: Outcome,
) -> None:
    """Send one streamed chat request and fill ``outcome`` in."""
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    parts: list[str] = []
    try:
        async with asyncio.timeout(timeout_s):
            async with http.post(url, json=body) as resp:
                outcome.status = resp.status
                if resp.status != 200:
                    await resp.read()
                    return
                outcome.status = TRUNCATED
                async for raw in resp.content:
                    if not raw.startswith(b"data: "):
                        continue
                    if raw.startswith(b"data: [DONE]"):
                        outcome.status = 200
                        break
                    event = json.loads(raw[6:])
                    if not outcome.served_by:
                        outcome.served_by = str(event.get("system_fingerprint") or "")
                    text = _content(event)
                    if text:
                        if not parts:
                            outcome.ttft_s = time.perf_counter() - sent
                        parts.append(text)
    except TimeoutError:
        outcome.status = TRUNCATED if outcome.status == TRUNCATED else TIMEOUT
    except (aiohttp.ClientError, OSError, ValueError):
        outcome.status = TRUNCATED if outcome.status in (200, TRUNCATED) else CONN_ERROR
    outcome.e2e_s = time.perf_counter() - sent
    outcome.output_tokens = len(parts)
    outcome.text = "".join(parts)
    if not outcome.ok:
        outcome.ttft_s = outcome.e2e_s = math.inf


async def _session(
    http: aiohttp.ClientSession,
    url: str,
    number: int,
    session: Session,
    start: float,
    timeout_s: float,
    out: list[Outcome],
) -> None:
    """One user: every planned turn is sent (a failed one is quoted as far as it came), so
    every peer serves the same number of requests."""
    messages = [{"role": "system", "content": session.system}] if session.system else []
    due = start + session.start_s
    for index, turn in enumerate(session.turns):
        due += turn.think_s
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        outcome = Outcome(number, index, due - start, lag_s=time.perf_counter() - due)
        messages.append({"role": "user", "content": turn.user})
        await stream_chat(http, url, messages, turn.max_tokens, timeout_s, outcome)
        out.append(outcome)
        messages.append({"role": "assistant", "content": outcome.text})
        due = time.perf_counter()


async def run_sessions(
    base_url: str, sessions: Sequence[Session], timeout_s: float, events: Sequence[Event] = ()
) -> tuple[list[Outcome], float]:
    """Run every session on its schedule and ``events`` at their offsets; return the
    outcomes and the wall time it took (seconds)."""
    url = base_url.rstrip("/") + "/v1/chat/completions"
    out: list[Outcome] = []
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    async with aiohttp.ClientSession(connector=connector) as http:
        start = time.perf_counter() + 0.05
        tasks = [asyncio.create_task(_at(start + at, action)) for at, action in events]
        tasks += [
            asyncio.create_task(_session(http, url, n, s, start, timeout_s, out))
            for n, s in enumerate(sessions)
        ]
        await asyncio.gather(*tasks)
    return out, time.perf_counter() - start


async def _at(when: float, action: Callable[[], Awaitable[object]]) -> None:
    delay = when - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    await action()
