"""Runs each (scenario, peer) pair of the LLM fleet on fresh processes, one result per pair.

The process side is :class:`loadtests.runner.PairRun`'s (peer config, start by PID, stop by
PID); only the upstream differs: emulated LLM pods instead of fake pods. Every peer gets the
same :data:`LLM_BUDGET` and the same planned sessions from one seed.
"""

from __future__ import annotations

import json
import random
import sys
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from gateway.balancer import POLICIES
from loadtests import procs
from loadtests.llm.client import Event, Outcome, run_sessions
from loadtests.llm.scenarios import LlmFault, LlmScenario
from loadtests.llm.summary import LlmSummary, Slo, cold_opens, ranked_ttft_s, summarize
from loadtests.llm.workloads import plan
from loadtests.peers import SHIPPED_DEFAULTS, Backend, Budget, Peer
from loadtests.runner import PairRun, Settings, _run_async, _tailgate_hedges

# Streams last seconds, so the per-try allowance (time to the response head for most peers,
# between reads for nginx) and the total are long; a hung pod still costs a retry's wait.
LLM_BUDGET = Budget(
    connect_s=1.0,
    per_try_s=10.0,
    total_s=30.0,
    retries=1,
    consecutive_5xx=5,
    ejection_s=10.0,
    check_interval_s=1.0,
)


def tailgate_peer(policy: str, overrides: str = "", label: str | None = None) -> Peer:
    """A tailgate row: a policy and, optionally, YAML merged over the benchmark config."""
    return Peer(label or f"tailgate {policy}", "tailgate", policy, overrides=overrides)


LLM_PEERS: dict[str, Peer] = {
    p.label: p
    for p in (
        *(tailgate_peer(policy) for policy in POLICIES),
        tailgate_peer("prefix_aware", SHIPPED_DEFAULTS, "tailgate shipped defaults"),
        Peer("sglang cache_aware", "sglang", "cache_aware"),
        Peer("sglang power_of_two", "sglang", "power_of_two"),
        Peer("nginx least_conn", "nginx", "least_conn"),
        Peer("envoy least_request", "envoy", "LEAST_REQUEST"),
    )
}


@dataclass
class LlmRow:
    """One peer in one scenario; ``note`` says why a row has no numbers."""

    scenario: str
    peer: str
    summary: LlmSummary | None = None
    ranked_ttft_s: list[float] = field(default_factory=list)  # inf = failed
    cache_hit_rate: float = float("nan")  # prompt tokens found cached, over the fleet
    aborted: int = 0  # sequences the pods dropped because their client went away
    hedges: dict[str, float] = field(default_factory=dict)  # tailgate's tailgate_hedges_total
    note: str = ""


class LlmPairRun(PairRun):
    """A pair whose upstream is a fleet of emulated LLM pods."""

    def __init__(self, scenario: LlmScenario, peer: Peer, settings: Settings) -> None:
        super().__init__(scenario, peer, settings)  # type: ignore[arg-type]
        self.llm = scenario

    def start_upstream(self) -> None:
        ports = procs.free_ports(len(self.llm.pods))
        started = []
        for i, (pod, port) in enumerate(zip(self.llm.pods, ports, strict=True)):
            cmd = [
                sys.executable,
                "-m",
                "loadtests.llm.pod",
                "--port",
                str(port),
                "--name",
                f"pod{i}",
                "--kv-blocks",
                str(pod.kv_blocks),
                "--max-running",
                str(pod.max_running),
                "--slow-factor",
                str(pod.slow_factor),
                "--seed",
                str(self.settings.seed * 100 + i),
            ]
            started.append((self._start(f"pod{i}", cmd, self.settings.load_cpus), port))
        for i, (child, port) in enumerate(started):
            child.wait_http(f"http://127.0.0.1:{port}/health")
            self.backends.append(Backend(f"pod{i}", port))

    def pod_stats(self) -> list[dict[str, float]]:
        stats = []
        for b in self.backends:
            with urllib.request.urlopen(f"http://127.0.0.1:{b.port}/_stats", timeout=5) as r:
                stats.append(json.loads(r.read()))
        return stats


def _fault_event(port: int, fault: LlmFault, duration_s: float) -> Event:
    async def send() -> None:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/_control"
            async with http.post(url, json=dict(fault.change)) as resp:
                await resp.read()

    return fault.at_fraction * duration_s, send


def run_pair(scenario: LlmScenario, peer: Peer, settings: Settings, slo: Slo) -> LlmRow:
    """Measure one peer in one scenario on fresh processes; a peer that cannot start is a
    note, not a failure of the run."""
    pair = LlmPairRun(scenario, peer, settings)
    with pair:
        try:
            pair.start_upstream()
            urls = pair.start_peer()
        except procs.StartError as exc:
            last = str(exc).strip().splitlines()[-1][:120]
            return LlmRow(scenario.name, peer.label, note=f"not available: {last}")
        sessions = plan(scenario.workload, settings.duration_s, random.Random(settings.seed))
        events = [
            _fault_event(pair.backends[f.pod].port, f, settings.duration_s) for f in scenario.faults
        ]
        outcomes, wall_s = _run_async(
            run_sessions(urls[0], sessions, settings.client_timeout_s, events)
        )
        stats = pair.pod_stats()
        hedges = _tailgate_hedges(pair.admin_port) if peer.kind == "tailgate" else {}
        _write_outcomes(pair.log_dir / "requests.jsonl", outcomes)
    queries = sum(s["prefix_queries_tokens"] for s in stats)
    hits = sum(s["prefix_hits_tokens"] for s in stats)
    return LlmRow(
        scenario.name,
        peer.label,
        summary=summarize(outcomes, wall_s, slo, cold_opens(sessions)),
        ranked_ttft_s=ranked_ttft_s(outcomes),
        cache_hit_rate=hits / queries if queries else float("nan"),
        aborted=int(sum(s["aborted"] for s in stats)),
        hedges=hedges,
    )


def _write_outcomes(path: Path, outcomes: Sequence[Outcome]) -> None:
    """Every request of a row, one JSON line each (without the answer's text), beside the
    row's logs: which pod served the slow ones is what explains a tail."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for outcome in outcomes:
            record = {k: v for k, v in asdict(outcome).items() if k != "text"}
            out.write(json.dumps(record, default=str) + "\n")


def run_all(
    scenarios: Sequence[LlmScenario],
    peers: Sequence[Peer],
    settings: Settings,
    slo: Slo,
    progress: Callable[[LlmRow], None] = lambda row: None,
) -> list[LlmRow]:
    rows = []
    for scenario in scenarios:
        for peer in peers:
            row = run_pair(scenario, peer, settings, slo)
            progress(row)
            rows.append(row)
    return rows
