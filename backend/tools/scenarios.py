"""Serving scenarios timed through the real engine: prefix-cached TTFT and ITL under prefill.

Both drive an :class:`~backend.engine.Engine` in-process over an already loaded runner, so what
is timed is the scheduler's own path (block allocation, prefix lookup, chunked prefill, batched
decode, sampling), without HTTP in the way.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from backend.engine import Engine, Request, TokenEvent
from backend.model import ModelConfig, Step
from backend.runner import ModelRunner
from backend.tools.parity import random_prompt

TIMEOUT_S = 120.0


class Borrowed:
    """A runner lent to an engine that must not close it (the caller owns it)."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.config: ModelConfig = runner.config
        self.device: torch.device = runner.device
        self.num_blocks = runner.num_blocks
        self.block_size = runner.block_size

    def forward(self, step: Step) -> torch.Tensor:
        return self.runner.forward(step)

    def heartbeat(self) -> None:
        self.runner.heartbeat()

    def close(self) -> None:
        pass


@dataclass
class Timeline:
    """Arrival times (``time.perf_counter``) and ids of one request's tokens."""

    submitted_s: float = 0.0
    token_s: list[float] = field(default_factory=list)
    token_ids: list[int | None] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    _arrived: threading.Condition = field(default_factory=threading.Condition)

    def on_event(self, event: TokenEvent) -> None:
        with self._arrived:
            self.token_s.append(time.perf_counter())
            self.token_ids.append(event.token_id)
            self._arrived.notify_all()
        if event.finish_reason is not None:
            self.done.set()

    def wait_tokens(self, count: int) -> None:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.token_s) >= count, TIMEOUT_S):
                raise RuntimeError(f"fewer than {count} tokens arrived")

    @property
    def ttft_s(self) -> float:
        return self.token_s[0] - self.submitted_s


def _engine(
    runner: ModelRunner,
    max_model_len: int,
    budget: int,
    max_batch_size: int = 8,
    look_ahead: bool = True,  # the engine's default
    first: Sequence[Request] = (),
) -> Engine:
    """A started, warmed-up engine; ``first`` are queued before it starts, so they are
    admitted in the same rounds whatever the timing (the batches of every step repeat)."""
    engine = Engine(
        lambda: Borrowed(runner),
        max_batch_size=max_batch_size,
        max_model_len=max_model_len,
        max_queue=max(16, len(first)),
        rng=random.Random(0),
        max_num_batched_tokens=budget,
        look_ahead=look_ahead,
    )
    for request in first:
        engine.submit(request)
    engine.start()
    if not engine.ready.wait(TIMEOUT_S):
        raise RuntimeError("engine did not warm up")
    return engine


def _request(prompt: list[int], max_tokens: int) -> tuple[Request, Timeline]:
    timeline = Timeline(submitted_s=time.perf_counter())
    request = Request(
        prompt_ids=prompt, max_tokens=max_tokens, ignore_eos=True, on_event=timeline.on_event
    )
    return request, timeline


def _submit(engine: Engine, prompt: list[int], max_tokens: int) -> Timeline:
    request, timeline = _request(prompt, max_tokens)
    engine.submit(request)
    return timeline


def _finish(timeline: Timeline) -> Timeline:
    if not timeline.done.wait(TIMEOUT_S):
        raise RuntimeError("request did not finish")
    return timeline


def prefix_cached_ttft(
    runner: ModelRunner, max_model_len: int, prompt_len: int = 2000, cached_len: int = 1900
) -> dict[str, Any]:
    """Median TTFT of fresh ``prompt_len``-token prompts, and of ones sharing ``cached_len``.

    Each cached probe first sends a prompt, then one with the same first ``cached_len`` tokens
    and a different tail; the second reuses the full blocks of the shared part.
    """
    vocab = runner.config.vocab_size
    engine = _engine(runner, max_model_len, budget=max_model_len)  # whole prompts: one pass
    try:
        fresh, cached = [], []
        for i in range(4):
            first = random_prompt(vocab, prompt_len, seed=1000 + i)
            fresh.append(_finish(_submit(engine, first, 1)).ttft_s)
            tail = random_prompt(vocab, prompt_len - cached_len, seed=2000 + i)
            cached.append(_finish(_submit(engine, first[:cached_len] + tail, 1)).ttft_s)
        stats = engine.cache_stats()
    finally:
        engine.stop(30)
    assert stats is not None
    uncached_ms = statistics.median(fresh[1:]) * 1000  # the first pays one-off kernel set-up
    cached_ms = statistics.median(cached[1:]) * 1000
    return {
        "prompt_len": prompt_len,
        "cached_len": cached_len,
        "uncached_ttft_ms": uncached_ms,
        "cached_ttft_ms": cached_ms,
        "ratio": cached_ms / uncached_ms,
        "hit_tokens": stats.hit_tokens,
        "query_tokens": stats.query_tokens,
    }


def itl_under_long_prefill(
    runner: ModelRunner,
    max_model_len: int,
    budget: int,
    long_len: int = 4000,
    look_ahead: bool = True,
) -> dict[str, Any]:
    """Inter-token latency of a running stream while a ``long_len``-token prompt arrives.

    ``budget`` is the engine's ``max_num_batched_tokens``: at or above ``long_len`` the whole
    prompt is prefilled in one pass (the stream stalls for it); below, in chunks between the
    stream's decode steps. ``look_ahead`` is the engine's (it applies only while nothing else
    needs the model: before and after the long prompt).
    """
    vocab = runner.config.vocab_size
    engine = _engine(runner, max_model_len, budget, look_ahead=look_ahead)
    try:
        stream = _submit(engine, random_prompt(vocab, 128, seed=7), 400)
        stream.wait_tokens(20)
        before = len(stream.token_s)
        long = _finish(_submit(engine, random_prompt(vocab, long_len, seed=8), 1))
        _finish(stream)
    finally:
        engine.stop(30)
    gaps_ms = [(b - a) * 1000 for a, b in zip(stream.token_s, stream.token_s[1:], strict=False)]
    steady = gaps_ms[: before - 1]
    window = [
        (b - a) * 1000
        for a, b in zip(stream.token_s, stream.token_s[1:], strict=False)
        if b >= long.submitted_s and a <= long.token_s[0]
    ]
    return {
        "budget": budget,
        "long_len": long_len,
        "look_ahead": look_ahead,
        "steady_itl_ms": statistics.median(steady[5:]),
        "max_itl_during_prefill_ms": max(window),
        "mean_itl_during_prefill_ms": statistics.mean(window),
        "long_ttft_ms": long.ttft_s * 1000,
    }


def engine_decode(
    runner: ModelRunner, max_model_len: int, batch: int, look_ahead: bool, tokens: int = 96
) -> dict[str, Any]:
    """Median time between a stream's tokens while ``batch`` streams decode through the engine.

    What a client sees per token at a steady batch, the host's per-step work included; with
    ``look_ahead`` the engine launches each step before reading the previous one's tokens.
    The first tokens (admission, prefill) are left out. ``tokens`` holds every stream's ids.
    """
    vocab = runner.config.vocab_size
    pairs = [_request(random_prompt(vocab, 128, seed=50 + i), tokens) for i in range(batch)]
    engine = _engine(runner, max_model_len, max_model_len, batch, look_ahead, [r for r, _ in pairs])
    streams = [timeline for _, timeline in pairs]
    try:
        for stream in streams:
            _finish(stream)
    finally:
        engine.stop(30)
    skip = 16
    gaps_ms = [
        (b - a) * 1000
        for s in streams
        for a, b in zip(s.token_s[skip:], s.token_s[skip + 1 :], strict=False)
    ]
    return {
        "batch": batch,
        "look_ahead": look_ahead,
        "itl_ms": statistics.median(gaps_ms),
        "tokens": [s.token_ids for s in streams],
    }


def engine_decode_compared(
    runner: ModelRunner, max_model_len: int, batch: int, rounds: int
) -> dict[str, Any]:
    """:func:`engine_decode` one step at a time and with the look-ahead, alternating for
    ``rounds`` rounds on one loaded model, so drift between calls cancels out of the ratio and
    the spread of one mode's rounds shows the noise; and whether every run gave the first's
    greedy tokens."""
    runs = [
        engine_decode(runner, max_model_len, batch, look_ahead)
        for _ in range(rounds)
        for look_ahead in (False, True)
    ]
    off = [r["itl_ms"] for r in runs if not r["look_ahead"]]
    on = [r["itl_ms"] for r in runs if r["look_ahead"]]
    return {
        "batch": batch,
        "off_itl_ms": off,
        "on_itl_ms": on,
        "ratio": statistics.median(on) / statistics.median(off),
        "tokens_equal": all(r["tokens"] == runs[0]["tokens"] for r in runs),
    }
