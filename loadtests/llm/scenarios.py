"""The LLM scenarios: which pods, which workload, which faults at which moment.

Four pods by default, sized so the steady chat load keeps each one at a handful of running
sequences (this machine's two cores carry the pods, the peer and the client at once). KV
capacities are scaled down from the calibrated 27,000 blocks so that pressure is reachable:
``kv-pressure`` has more distinct system prompts (48 x 1,500 tokens) than the four caches
hold (4 x 1,500 blocks = 24,000 tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from loadtests.llm.workloads import WorkloadSpec


@dataclass(frozen=True)
class LlmPodSpec:
    kv_blocks: int = 4000  # 64,000 tokens: ~40 system prompts
    max_running: int = 64
    slow_factor: float = 1.0


@dataclass(frozen=True)
class LlmFault:
    """``change`` is posted to pod ``pod``'s ``/_control`` at ``at_fraction`` of the run."""

    at_fraction: float
    pod: int
    change: Mapping[str, object]


@dataclass(frozen=True)
class LlmScenario:
    name: str
    title: str
    workload: WorkloadSpec
    pods: tuple[LlmPodSpec, ...] = (LlmPodSpec(),) * 4
    faults: tuple[LlmFault, ...] = field(default_factory=tuple)


CHAT = WorkloadSpec(kind="chat", sessions_per_s=1.5)

SCENARIOS: dict[str, LlmScenario] = {
    s.name: s
    for s in (
        LlmScenario("equal", "four equal pods, multi-turn chat", CHAT),
        LlmScenario(
            "sharegpt",
            "ShareGPT-like one-turn mix (no shared prefix)",
            WorkloadSpec(kind="sharegpt", sessions_per_s=6.0),
        ),
        LlmScenario(
            "control",
            "chat with no system prompt shared across sessions",
            WorkloadSpec(kind="control", sessions_per_s=1.5),
        ),
        LlmScenario(
            "slow-pod",
            "one pod 3x slower",
            CHAT,
            pods=(LlmPodSpec(slow_factor=3.0),) + (LlmPodSpec(),) * 3,
        ),
        LlmScenario(
            "errors",
            "one pod answers 500s from a third of the run on",
            CHAT,
            faults=(LlmFault(1 / 3, 0, {"error_rate": 1.0}),),
        ),
        LlmScenario(
            "hang",
            "one pod's engine hangs from a third of the run on",
            CHAT,
            faults=(LlmFault(1 / 3, 0, {"hang": True}),),
        ),
        LlmScenario(
            "kv-pressure",
            "48 system prompts, caches that hold 16 each",
            WorkloadSpec(kind="chat", sessions_per_s=1.5, system_prompts=48, zipf_s=0.6),
            pods=(LlmPodSpec(kv_blocks=1500),) * 4,
        ),
        LlmScenario(
            "ramp",
            "chat ramping from 0.5 to 5 sessions/s (saturation)",
            WorkloadSpec(kind="chat", sessions_per_s=0.5, end_sessions_per_s=5.0),
        ),
    )
}
