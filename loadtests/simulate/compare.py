"""Every policy, and the oracle, on the same scenario and arrivals: one comparison table."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway.balancer import POLICIES as BALANCER_POLICIES
from gateway.config.model import GatewayConfig
from loadtests.simulate.engine import PolicyChoice, simulate
from loadtests.simulate.oracle import oracle
from loadtests.simulate.pods import has_fault
from loadtests.simulate.scenarios import Scenario
from loadtests.simulate.stats import Summary, share_text, summarize

# Every policy the gateway registers (weighted_score with both of its selections): a policy
# added to gateway.balancer.POLICIES is compared here with no further change.
POLICIES = tuple(
    choice
    for name in BALANCER_POLICIES
    for choice in (
        (PolicyChoice(name, "p2c"), PolicyChoice(name, "best"))
        if name == "weighted_score"
        else (PolicyChoice(name),)
    )
)
# `best` scores every pod on every pick (O(M)): its request count is capped so that a run
# scores at most this many pods in all.
BEST_SCORE_BUDGET = 2_000_000


def requests_for(choice: PolicyChoice, backends: int, requests: int) -> int:
    if choice.selection == "best" and choice.policy == "weighted_score":
        return min(requests, max(1000, BEST_SCORE_BUDGET // backends))
    return requests


def compare(
    scenario: Scenario,
    replicas: int,
    requests: int,
    seed: int = 1,
    gateway: GatewayConfig | None = None,
    policies: Sequence[PolicyChoice] = POLICIES,
    progress: Callable[[str], None] | None = None,
) -> list[Summary]:
    """The oracle's summary first, then each policy's, with ratios to the oracle run on the
    same number of requests."""
    oracles: dict[int, Summary] = {}

    def oracle_for(n: int) -> Summary:
        if n not in oracles:
            oracles[n] = summarize(oracle(scenario, n, replicas, seed))
        return oracles[n]

    rows = [oracle_for(requests)]
    for choice in policies:
        n = requests_for(choice, len(scenario.pods), requests)
        result = simulate(scenario, choice, replicas, n, seed, gateway)
        if progress is not None:
            rate = result.events / result.wall_s if result.wall_s else 0.0
            progress(
                f"{scenario.name} M={len(scenario.pods)} G={replicas} {choice.label}: "
                f"{n} requests, {result.events} events in {result.wall_s:.1f} s "
                f"({rate:,.0f} events/s)"
            )
        rows.append(summarize(result).with_oracle(oracle_for(n)))
    return rows


def bad_pods(scenario: Scenario) -> int:
    """How many leading pods misbehave (scenarios put them first)."""
    return sum(1 for p in scenario.pods if has_fault(p))


def markdown_table(rows: Sequence[Summary], bad: int) -> str:
    """A markdown table of `compare`'s rows."""
    lines = [
        "| policy | p50 ms | p99 ms | p99.9 ms | p99 / oracle | ok % | req/s | herding CoV "
        "| traffic share |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        ratio = "1.00" if r.label == "oracle" else f"{r.p99_vs_oracle:.2f}"
        herding = "-" if r.label == "oracle" else f"{r.herding_cov:.2f}"
        lines.append(
            f"| {r.label} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.p999_ms:.1f} | {ratio} "
            f"| {r.success * 100:.2f} | {r.throughput_rps:,.0f} | {herding} "
            f"| {share_text(r.shares, bad)} |"
        )
    return "\n".join(lines)
