"""The emulated engine: a waiting queue, a running batch and one step loop.

Each step admits waiting sequences in arrival order while there is room (``max_running``
and KV blocks for prompt *and* ``max_tokens``), then spends the step's token budget on one
decode token per running sequence and the rest on prefill chunks; the step lasts what
:class:`~loadtests.llm.costs.EngineCosts` says, as one ``asyncio.sleep``, never a sleep per
token. The step that finishes a prompt yields its first token, as vLLM's does.

Differences from vLLM, on purpose: KV blocks for the whole answer are reserved at admission,
so a full cache makes requests wait instead of preempting running ones; a prompt is hit
at most up to its last token (which is always computed, as in vLLM).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field

from loadtests.fakepod import Faults, pause_left
from loadtests.llm.blocks import Allocation, BlockPool, chain_keys
from loadtests.llm.costs import EngineCosts
from loadtests.llm.tokens import answer_start, answer_token


class PromptTooLong(ValueError):
    """The request can never fit the KV cache, however long it waits."""


@dataclass(eq=False)
class Sequence:
    """One request inside the engine; ``changed`` is set whenever it gains tokens or ends."""

    prompt: list[str]
    max_tokens: int
    keys: list[int] = field(default_factory=list)
    allocation: Allocation | None = None
    cached_tokens: int = 0
    computed: int = 0  # prompt tokens with their KV in the cache
    output: list[str] = field(default_factory=list)
    seed: int = 0
    first_index: int = 0  # a continued answer's words already generated elsewhere
    finished: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def prefilling(self) -> bool:
        return self.computed < len(self.prompt)


@dataclass
class Counters:
    """Totals since start, in vLLM's units (prefix-cache queries and hits are tokens)."""

    prefix_queries_tokens: int = 0
    prefix_hits_tokens: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: int = 0
    aborted: int = 0
    steps: int = 0


@dataclass(frozen=True)
class Step:
    """One planned step: who decodes, how many prompt tokens each prefill gets, how long."""

    decoding: list[Sequence]
    chunks: dict[Sequence, int]
    duration_s: float


class Engine:
    def __init__(self, costs: EngineCosts, faults: Faults | None = None, seed: int = 0) -> None:
        self.costs = costs
        self.faults = faults or Faults()
        self.rng = random.Random(seed)  # draws the injected errors
        self.pool = BlockPool(costs.kv_blocks, costs.block_tokens)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.counters = Counters()
        self.started_s = time.monotonic()
        self._work = asyncio.Event()

    def submit(self, prompt: list[str], max_tokens: int) -> Sequence:
        if self.pool.blocks_for(len(prompt) + max_tokens) > self.pool.num_blocks:
            raise PromptTooLong(
                f"{len(prompt)} prompt + {max_tokens} output tokens exceed the KV cache "
                f"({self.pool.num_blocks * self.pool.block_tokens} tokens)"
            )
        keys = chain_keys(prompt, self.costs.block_tokens)
        seed, first_index = answer_start(prompt)
        seq = Sequence(prompt, max_tokens, keys, seed=seed, first_index=first_index)
        self.waiting.append(seq)
        self._work.set()
        return seq

    def abort(self, seq: Sequence) -> None:
        """The client went away: drop the sequence wherever it is and free its blocks."""
        if seq.finished:
            return
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.running:
            self.running.remove(seq)
        if seq.allocation is not None:
            self.pool.release(seq.allocation)
        seq.finished = True
        self.counters.aborted += 1

    def kv_usage(self) -> float:
        return self.pool.used / self.pool.num_blocks

    async def run(self) -> None:
        """The step loop: idle until there is work, stalled while a fault says so."""
        while True:
            if not self.waiting and not self.running:
                self._work.clear()
                await self._work.wait()
            stall_s = pause_left(self.faults, time.monotonic() - self.started_s)
            if self.faults.hang or stall_s > 0:
                await asyncio.sleep(stall_s if stall_s > 0 else 0.05)
                continue
            step = self.schedule()
            if step is None:  # everything waiting was aborted
                continue
            await asyncio.sleep(step.duration_s * self.faults.slow_factor)
            self.apply(step)

    def schedule(self) -> Step | None:
        """Admit what fits and plan the next step; None when nothing can run."""
        self._admit()
        if not self.running:
            return None
        decoding, chunks = self._plan()
        duration_s = self.costs.step_duration_s(len(decoding), sum(chunks.values()))
        return Step(decoding, chunks, duration_s)

    def _admit(self) -> None:
        """Admit in arrival order; the first that does not fit blocks the rest (FCFS)."""
        while self.waiting and len(self.running) < self.costs.max_running:
            seq = self.waiting[0]
            allocation = self.pool.allocate(seq.keys, len(seq.prompt) + seq.max_tokens)
            if allocation is None:
                return
            self.waiting.popleft()
            seq.allocation = allocation
            seq.cached_tokens = min(
                len(allocation.cached) * self.costs.block_tokens, len(seq.prompt) - 1
            )
            seq.computed = seq.cached_tokens
            self.counters.prefix_queries_tokens += len(seq.prompt)
            self.counters.prefix_hits_tokens += seq.cached_tokens
            self.counters.prompt_tokens += len(seq.prompt)
            self.running.append(seq)

    def _plan(self) -> tuple[list[Sequence], dict[Sequence, int]]:
        """Who decodes this step and how many prompt tokens each prefilling sequence gets."""
        decoding = [s for s in self.running if not s.prefilling]
        budget = self.costs.chunk_tokens - len(decoding)
        chunks: dict[Sequence, int] = {}
        for seq in self.running:
            if budget <= 0:
                break
            if seq.prefilling:
                chunks[seq] = min(len(seq.prompt) - seq.computed, budget)
                budget -= chunks[seq]
        return decoding, chunks

    def apply(self, step: Step) -> list[Sequence]:
        """The step is over: advance its sequences (skipping those aborted meanwhile);
        return those that gained a token."""
        self.counters.steps += 1
        producing = list(step.decoding)
        for seq, tokens in step.chunks.items():
            if seq.finished:
                continue
            seq.computed += tokens
            if not seq.prefilling:
                assert seq.allocation is not None
                self.pool.publish(seq.allocation, seq.keys)
                producing.append(seq)
        gained = []
        for seq in producing:
            if seq.finished:  # aborted during the step
                continue
            gained.append(seq)
            seq.output.append(answer_token(seq.seed, seq.first_index + len(seq.output)))
            self.counters.generation_tokens += 1
            if len(seq.output) >= seq.max_tokens:
                self._finish(seq)
            seq.changed.set()
        return gained

    def _finish(self, seq: Sequence) -> None:
        """Publish the answer's full blocks too (the next turn quotes it), then release."""
        assert seq.allocation is not None
        keys = chain_keys(seq.prompt + seq.output, self.costs.block_tokens)
        self.pool.publish(seq.allocation, keys)
        self.pool.release(seq.allocation)
        self.running.remove(seq)
        seq.finished = True
        self.counters.finished += 1
