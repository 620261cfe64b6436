"""Hedging on and off in the fleet simulator, on the trouble scenarios (virtual time, so the
numbers do not depend on how busy the machine is).

    python -m loadtests.simulate.hedge_compare [--requests 40000] [--backends 4] [--load 0.7]

The faulty pod turns bad 10 s in (hang, 500s) so the balancer has learned the fleet first;
p99 and p99.9 are of successful requests, "backend / request" counts every try (retries and
hedges) per client request.
"""

from __future__ import annotations

import argparse
import dataclasses

from gateway.config import parse_config
from loadtests.simulate.engine import PolicyChoice, RunResult, simulate
from loadtests.simulate.scenarios import Scenario, build_scenario

SCENARIOS = (("pausing_pod", 0.0), ("hanging_pod", 10.0), ("slow_pod", 0.0), ("failing_pod", 10.0))
# (label, policy, YAML): the last row is a least-connections rule with no hedging, what
# nginx's least_conn and HAProxy's leastconn do, so the gap to a peer's p99 that is the
# balancing logic's (no request-path overhead in virtual time) reads off one table.
SETTINGS = (
    ("hedging off", "weighted_score", "hedging: {enabled: false}\n"),
    ("hedging as shipped (p99)", "weighted_score", ""),
    ("hedging at p95", "weighted_score", "hedging: {quantile: 0.95}\n"),
    ("least_request, hedging off", "least_request", "hedging: {enabled: false}\n"),
)
BASE = "backends: [{url: 'http://127.0.0.1:1'}]\ntimeouts: {per_try: 1s}\n"


def _faulty_from(scenario: Scenario, start_s: float) -> Scenario:
    if start_s <= 0:
        return scenario
    first = dataclasses.replace(scenario.pods[0], fault_from_s=start_s)
    return dataclasses.replace(scenario, pods=(first, *scenario.pods[1:]))


def _quantile_ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def row(name: str, label: str, result: RunResult) -> str:
    tries = sum(result.tries_per_pod)
    return (
        f"| {name} | {label} | {_quantile_ms(result.latencies_s, 0.99):.1f} | "
        f"{_quantile_ms(result.latencies_s, 0.999):.1f} | {result.failed / result.requests:.2%} | "
        f"{tries / result.requests:.3f} | {result.extra['hedges']:.0f} | "
        f"{result.extra['hedges_won']:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--backends", type=int, default=4)
    parser.add_argument("--load", type=float, default=0.7)
    args = parser.parse_args()
    print("| scenario | hedging | p99 ms | p99.9 ms | errors | backend / request | hedges | won |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for name, fault_from_s in SCENARIOS:
        scenario = _faulty_from(build_scenario(name, args.backends, args.load), fault_from_s)
        for label, policy, extra in SETTINGS:
            config = parse_config(BASE + extra)
            result = simulate(scenario, PolicyChoice(policy), 1, args.requests, 1, config)
            print(row(name, label, result), flush=True)


if __name__ == "__main__":
    main()
