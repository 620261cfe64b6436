"""LLM pods on virtual time: the emulator's own engine, stepped by the simulator's clock.

Each pod is a :class:`loadtests.llm.engine.Engine` (the same scheduler, prefix-cached KV
blocks and step costs as the HTTP pod of ``loadtests.llm``), but a step is a heap event
instead of an ``asyncio.sleep``, so a fleet of M = 1,000 pods runs faster than real time and
a policy sees token-level behaviour: prefill of the uncached prompt, batch size, KV waits.
"""

from __future__ import annotations

from loadtests.llm.costs import EngineCosts
from loadtests.llm.engine import Engine, Sequence, Step


class SimLlmPod:
    """One pod: work is submitted at a virtual time; steps run back to back while busy."""

    __slots__ = ("arrived_s", "engine", "index", "slow_factor", "step")

    def __init__(self, index: int, costs: EngineCosts, slow_factor: float = 1.0) -> None:
        self.index = index
        self.engine = Engine(costs)
        self.slow_factor = slow_factor
        self.step: Step | None = None  # the step in flight, None when idle
        self.arrived_s: dict[Sequence, float] = {}

    @property
    def idle(self) -> bool:
        return self.step is None

    def submit(self, prompt: list[str], max_tokens: int, now_s: float) -> Sequence:
        seq = self.engine.submit(prompt, max_tokens)
        self.arrived_s[seq] = now_s
        return seq

    def start_step(self, now_s: float) -> float | None:
        """Begin the next step; its end time, or None when there is nothing to run."""
        self.step = self.engine.schedule()
        if self.step is None:
            return None
        return now_s + self.step.duration_s * self.slow_factor

    def end_step(self) -> list[Sequence]:
        """Finish the step in flight; the sequences that gained a token in it."""
        assert self.step is not None
        produced = self.engine.apply(self.step)
        self.step = None
        return produced

    def uncached_tokens(self, prompt_tokens: int, keys: list[int]) -> int:
        """What a prompt would cost this pod to prefill now (the oracle's view)."""
        hit = self.engine.pool.hit_blocks(keys) * self.engine.pool.block_tokens
        return prompt_tokens - min(hit, prompt_tokens - 1)

    def queued_prefill_tokens(self) -> int:
        """Prompt tokens admitted or waiting but not computed yet."""
        engine = self.engine
        waiting = sum(len(s.prompt) for s in engine.waiting)
        return waiting + sum(len(s.prompt) - s.computed for s in engine.running)
