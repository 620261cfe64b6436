"""The benchmark matrix behind BENCHMARKS-simulate.md, and its plot.

Three parts: every scenario at M = 100, G = 8; a scale grid over G and M (slow-pod scenario);
the four-pod scenarios of the real loadtests (one gateway, fakepods with 4 slots and ~20 ms
lognormal service). Plus one run of 10^6 requests at M = 1000, G = 32 to measure speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.simulate.compare import bad_pods, compare, markdown_table
from loadtests.simulate.engine import PolicyChoice, simulate
from loadtests.simulate.scenarios import SCENARIOS, build_scenario
from loadtests.simulate.stats import Summary

REALITY_SCENARIOS = ("baseline", "slow_pod", "failing_pod", "hanging_pod", "pausing_pod")


@dataclass
class BenchPlan:
    """Sizes of each part; `quick()` is for a smoke run."""

    requests: int = 50_000
    grid_requests: int = 30_000
    reality_requests: int = 20_000
    scale_requests: int = 1_000_000
    replicas: tuple[int, ...] = (1, 8, 32)
    backends: tuple[int, ...] = (4, 100, 1000)
    load: float = 0.7
    seed: int = 1

    @classmethod
    def quick(cls) -> BenchPlan:
        return cls(2000, 2000, 2000, 20_000, (1, 4), (4, 20))


@dataclass
class BenchResults:
    scenarios: dict[str, list[Summary]] = field(default_factory=dict)  # M=100, G=8
    grid: dict[tuple[int, int], list[Summary]] = field(default_factory=dict)  # (G, M)
    reality: dict[str, list[Summary]] = field(default_factory=dict)  # M=4, G=1
    scale: str = ""


def run_bench(plan: BenchPlan, log: Callable[[str], None]) -> BenchResults:
    out = BenchResults()
    mid_m = plan.backends[len(plan.backends) // 2]
    mid_g = plan.replicas[len(plan.replicas) // 2]
    for name in SCENARIOS:
        scenario = build_scenario(name, mid_m, plan.load)
        out.scenarios[name] = compare(scenario, mid_g, plan.requests, plan.seed, progress=log)
    for m in plan.backends:
        for g in plan.replicas:
            scenario = build_scenario("slow_pod", m, plan.load)
            out.grid[(g, m)] = compare(scenario, g, plan.grid_requests, plan.seed, progress=log)
    for name in REALITY_SCENARIOS:
        scenario = build_scenario(name, 4, plan.load)
        out.reality[name] = compare(scenario, 1, plan.reality_requests, plan.seed, progress=log)
    big_m, big_g = plan.backends[-1], plan.replicas[-1]
    scenario = build_scenario("baseline", big_m, plan.load)
    started = time.perf_counter()
    result = simulate(
        scenario, PolicyChoice("weighted_score", "p2c"), big_g, plan.scale_requests, plan.seed
    )
    wall_s = time.perf_counter() - started
    out.scale = (
        f"{plan.scale_requests:,} requests, M = {big_m}, G = {big_g}, weighted_score/p2c: "
        f"{result.events:,} events in {wall_s:.1f} s wall on one core "
        f"({result.events / wall_s:,.0f} events/s, {plan.scale_requests / wall_s:,.0f} "
        f"requests/s; {result.duration_s:.1f} s of virtual time)"
    )
    log(out.scale)
    return out


def _by_label(rows: list[Summary]) -> dict[str, Summary]:
    return {r.label: r for r in rows}


def write_plot(results: BenchResults, plan: BenchPlan, path: Path) -> None:
    """p99 / oracle and herding against G (slow pod, middle M), and p99 / oracle by scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mid_m = plan.backends[len(plan.backends) // 2]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    labels = [r.label for r in next(iter(results.grid.values()))[1:]]
    for label in labels:
        gs = list(plan.replicas)
        rows = [_by_label(results.grid[(g, mid_m)])[label] for g in gs]
        axes[0].plot(gs, [r.p99_vs_oracle for r in rows], marker="o", label=label)
        axes[1].plot(gs, [r.herding_cov for r in rows], marker="o", label=label)
    title = f"slow pod, M = {mid_m}"
    axes[0].set(xscale="log", yscale="log", xlabel="gateway replicas G", ylabel="p99 / oracle")
    axes[1].set(xscale="log", xlabel="gateway replicas G", ylabel="herding (CoV of pod load)")
    axes[0].set_title(title)
    axes[1].set_title(title)
    names = list(results.scenarios)
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        values = [_by_label(results.scenarios[n])[label].p99_vs_oracle for n in names]
        axes[2].bar([i + k * width for i in range(len(names))], values, width, label=label)
    axes[2].set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=30)
    mid_g = plan.replicas[len(plan.replicas) // 2]
    axes[2].set(yscale="log", ylabel="p99 / oracle p99")
    axes[2].set_title(f"scenarios, M = {mid_m}, G = {mid_g}")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tables_markdown(results: BenchResults, plan: BenchPlan) -> str:
    """The generated part of the benchmark fragment."""
    mid_m = plan.backends[len(plan.backends) // 2]
    mid_g = plan.replicas[len(plan.replicas) // 2]
    parts = [f"### Every scenario at M = {mid_m}, G = {mid_g} ({plan.requests:,} requests)\n"]
    for name, rows in results.scenarios.items():
        bad = bad_pods(build_scenario(name, mid_m, plan.load))
        parts += [f"#### {name}\n", markdown_table(rows, bad), ""]
    parts.append("### Scale grid: slow pod (one pod in ten 5x slower), p99 / oracle p99\n")
    labels = [r.label for r in next(iter(results.grid.values()))[1:]]
    header = "| M | G | oracle p99 ms | " + " | ".join(labels) + " |"
    parts += [header, "|--:|--:|--:|" + "--:|" * len(labels)]
    for (g, m), rows in sorted(results.grid.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        by = _by_label(rows)
        cells = " | ".join(
            f"{by[lb].p99_vs_oracle:.2f} (h {by[lb].herding_cov:.2f})" for lb in labels
        )
        parts.append(f"| {m} | {g} | {rows[0].p99_ms:.1f} | {cells} |")
    parts.append("\n(h = herding CoV.)\n")
    parts.append(f"### Four pods, one gateway ({plan.reality_requests:,} requests)\n")
    for name, rows in results.reality.items():
        bad = bad_pods(build_scenario(name, 4, plan.load))
        parts += [f"#### {name}\n", markdown_table(rows, bad), ""]
    parts.append("### Four pods: p99 of each policy relative to weighted_score/p2c\n")
    parts.append(ratio_table(results.reality))
    parts += ["", f"### Speed\n\n{results.scale}\n"]
    return "\n".join(parts)


def ratio_table(reality: dict[str, list[Summary]]) -> str:
    """p99(policy) / p99(weighted_score/p2c) per scenario: what the real loadtests compare."""
    labels = [r.label for r in next(iter(reality.values()))[1:]]
    lines = ["| scenario | " + " | ".join(labels) + " |", "|---|" + "--:|" * len(labels)]
    for name, rows in reality.items():
        by = _by_label(rows)
        ref = by["weighted_score/p2c"].p99_ms
        cells = " | ".join(f"{by[lb].p99_ms / ref:.2f}" for lb in labels)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)
