"""Cost of one balancer pick for 10, 100 and 1,000 candidates (a benchmark, not a test).

    python -m loadtests.bench_pick [--output BENCHMARKS-pick.md]

Candidates carry realistic signals (latency samples, in-flight requests, reported queue depths,
mixed weights); each policy is refreshed once, as the gateway's background task would, and
then timed on picks alone. Printed per pick: the median over repeats of a batch's mean time.
prefix_aware picks for a 4,000-token chat prompt (hashed once beforehand, as the handler does)
whose prefix a tenth of the fleet holds to various depths.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable

from gateway.balancer import POLICIES, SimpleCandidate, build_policy
from gateway.balancer.base import Policy
from gateway.balancer.prefix_aware import PrefixAware
from gateway.config.model import BalancerConfig, Selection
from gateway.request_info import RequestInfo
from gateway.request_parse import parse_request

SIZES = (10, 100, 1000)
# Every registered policy (weighted_score with both selections): a new one is timed too.
VARIANTS: tuple[tuple[str, str], ...] = tuple(
    variant
    for name in POLICIES
    for variant in (((name, "best"), (name, "p2c")) if name == "weighted_score" else ((name, "-"),))
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


def long_prompt_request() -> RequestInfo:
    """A chat request of about 4,000 tokens (16,000 bytes): a system prompt and two turns."""
    words = random.Random(0)
    text = " ".join(f"w{words.randrange(4096)}" for _ in range(2700))
    third = len(text) // 3
    messages = [
        {"role": "system", "content": text[:third]},
        {"role": "user", "content": text[third : 2 * third]},
        {"role": "user", "content": text[2 * third :]},
    ]
    body = json.dumps({"model": "m", "messages": messages, "stream": True}).encode()
    return parse_request(body, {}, with_blocks=True)


def seed_index(
    policy: PrefixAware, fleet: list[SimpleCandidate], request: RequestInfo, rng: random.Random
) -> None:
    """A tenth of the fleet holds a prefix of the prompt, from one block to all of it."""
    blocks = request.blocks
    for c in rng.sample(fleet, max(1, len(fleet) // 10)):
        policy.index.record(c.name, blocks[: rng.randint(1, len(blocks))])


class Cell:
    """One (policy, fleet size) measurement: a pick closure and its timed batches."""

    def __init__(self, policy_name: str, selection: str, n: int, target_s: float) -> None:
        fleet = make_fleet(n, random.Random(n))
        chosen: Selection = "best" if selection == "best" else "p2c"
        policy: Policy = build_policy(BalancerConfig(policy=policy_name, selection=chosen))
        request = None
        if isinstance(policy, PrefixAware):
            request = long_prompt_request()
            seed_index(policy, fleet, request, random.Random(n))
        policy.refresh(fleet, NOW)
        pick_rng = random.Random(1)
        self.pick: Callable[[], object] = lambda: policy.pick(fleet, NOW, pick_rng, request)
        self.batch = self._calibrate(target_s)
        self.means_s: list[float] = []

    def _calibrate(self, target_s: float) -> int:
        """Picks per batch so that one batch lasts about `target_s`."""
        count, elapsed = 1, 0.0
        while elapsed < target_s / 10:
            count *= 2
            elapsed = self._run(count)
        return max(1, int(count * target_s / elapsed))

    def _run(self, count: int) -> float:
        pick = self.pick
        start = time.perf_counter()
        for _ in range(count):
            pick()
        return time.perf_counter() - start

    def measure_once(self) -> None:
        self.means_s.append(self._run(self.batch) / self.batch)


def measure(repeats: int, target_s: float) -> list[tuple[str, str, list[float]]]:
    """Median per-pick time of every cell. The repeats go round all cells in turn, so that a
    burst of load from elsewhere spoils one repeat of many cells, which the median discards,
    rather than every repeat of one cell."""
    cells = {(p, sel, n): Cell(p, sel, n, target_s) for p, sel in VARIANTS for n in SIZES}
    for _ in range(repeats):
        for cell in cells.values():
            cell.measure_once()
    return [
        (p, sel, [statistics.median(cells[p, sel, n].means_s) for n in SIZES])
        for p, sel in VARIANTS
    ]


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
        "candidates whatever the fleet size, the medians coming from refresh(); prefix_aware",
        "scores the holders of the prompt's deepest known block (a binary search over the",
        "prompt's block hashes), its home on the ring (a cached walk) and one random draw;",
        "weighted_score",
        "`best` scores every candidate; round_robin and random do a heap or binary-search step",
        "plus one C-level comparison of the candidate tuple (to notice a changed set).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--target-ms", type=float, default=20.0, help="length of one batch")
    parser.add_argument("--output", help="also write the markdown fragment to this file")
    args = parser.parse_args(argv)

    rows = measure(args.repeats, args.target_ms / 1000)
    command = " ".join(["python -m loadtests.bench_pick", *sys.argv[1:]])
    text = render(rows, command)
    print(text, end="")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
