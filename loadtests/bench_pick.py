"""Cost of one balancer pick for 10, 100 and 1,000 candidates (a benchmark, not a test).

    python -m loadtests.bench_pick [--output BENCHMARKS-pick.md]

Candidates carry realistic signals (latency samples, in-flight requests, reported queue depths,
mixed weights); each policy is refreshed once, as the gateway's background task would, and
then timed on picks alone. Printed per pick: the median over repeats of the mean time.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable

from gateway.balancer import BalancerSettings, SimpleCandidate, build_policy
from gateway.balancer.base import Policy

SIZES = (10, 100, 1000)
VARIANTS: tuple[tuple[str, str], ...] = (
    ("weighted_score", "best"),
    ("weighted_score", "p2c"),
    ("least_request", "-"),
    ("peak_ewma", "-"),
    ("round_robin", "-"),
    ("random", "-"),
)
NOW = 1000.0


def make_fleet(n: int, rng: random.Random) -> list[SimpleCandidate]:
    fleet = []
    for i in range(n):
        c = SimpleCandidate.new(f"backend-{i}", now=0.0, weight=rng.choice((1.0, 2.0, 4.0)))
        for _ in range(rng.randint(0, 8)):
            c.signals.request_started(NOW - 1.0)
        c.signals.request_started(NOW - 1.0)
        c.signals.request_finished(rng.uniform(0.05, 0.5), NOW - rng.uniform(0.0, 5.0))
        if rng.random() < 0.5:
            c.signals.report_queue_depth(rng.uniform(0, 20), NOW - rng.uniform(0.0, 8.0))
        fleet.append(c)
    return fleet


def time_per_call_s(call: Callable[[], object], repeats: int, target_s: float) -> float:
    """Median over `repeats` of the mean seconds per call, each repeat lasting ~`target_s`."""
    count, elapsed = 1, 0.0
    while elapsed < target_s / 10:  # calibrate the batch size
        count *= 2
        start = time.perf_counter()
        for _ in range(count):
            call()
        elapsed = time.perf_counter() - start
    batch = max(1, int(count * target_s / elapsed))
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batch):
            call()
        means.append((time.perf_counter() - start) / batch)
    return statistics.median(means)


def bench(policy_name: str, selection: str, n: int, repeats: int, target_s: float) -> float:
    rng = random.Random(n)
    fleet = make_fleet(n, rng)
    settings = BalancerSettings(
        policy=policy_name, selection=selection if selection != "-" else "p2c"
    )
    policy: Policy = build_policy(settings)
    policy.refresh(fleet, NOW)
    pick_rng = random.Random(1)
    return time_per_call_s(lambda: policy.pick(fleet, NOW, pick_rng), repeats, target_s)


def render(rows: list[tuple[str, str, list[float]]], command: str) -> str:
    header = "| policy | selection | " + " | ".join(f"{n:,} candidates" for n in SIZES) + " |"
    lines = [
        "## Balancer pick cost",
        "",
        f"Command: `{command}`  ",
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.machine()}; microseconds per pick, median of repeats.",
        "",
        header,
        "|" + " --- |" * (2 + len(SIZES)),
    ]
    for policy_name, selection, per_pick_s in rows:
        cells = " | ".join(f"{s * 1e6:.2f} µs" for s in per_pick_s)
        lines.append(f"| {policy_name} | {selection} | {cells} |")
    lines += [
        "",
        "Expected shape: `p2c` policies (weighted_score p2c, least_request, peak_ewma) score two",
        "candidates whatever the fleet size, the medians coming from refresh(); weighted_score",
        "`best` scores every candidate; round_robin and random do a heap or binary-search step",
        "plus one C-level comparison of the candidate tuple (to notice a changed set).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--target-ms", type=float, default=20.0, help="length of one repeat")
    parser.add_argument("--output", help="also write the markdown fragment to this file")
    args = parser.parse_args(argv)

    rows = []
    for policy_name, selection in VARIANTS:
        per_pick = [
            bench(policy_name, selection, n, args.repeats, args.target_ms / 1000) for n in SIZES
        ]
        rows.append((policy_name, selection, per_pick))
    command = " ".join(["python -m loadtests.bench_pick", *sys.argv[1:]])
    text = render(rows, command)
    print(text, end="")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
