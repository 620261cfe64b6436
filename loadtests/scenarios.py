"""The benchmark scenarios: which pods, which load, which faults at which moment.

Pods are :mod:`loadtests.fakepod` processes. Each has 4 slots and a 25 ms mean lognormal
service time, so about 160 rps of capacity; three make 480 rps, and the steady scenarios
run at half of that so a good balancer has room to route around trouble.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

from loadtests.fakepod import lognormal_mu

TROUBLE_PEERS = (
    "direct",
    "tailgate shipped defaults",
    "envoy least_request",
    "envoy round_robin",
    "nginx least_conn",
    "nginx random two least_conn",
    "haproxy leastconn",
)
OVERHEAD_PEERS = (
    "direct",
    "aiohttp floor",
    "tailgate shipped defaults",
    "tailgate weighted_score --workers 2",
    "envoy least_request",
    "nginx least_conn",
    "haproxy leastconn",
)


@dataclass(frozen=True)
class PodSpec:
    name: str
    slots: int = 4
    service_ms: float = 25.0
    sigma: float = 0.5
    slow_factor: float = 1.0
    faults: Mapping[str, object] = field(default_factory=dict)  # set before the run starts


@dataclass(frozen=True)
class Fault:
    """``change`` is posted to pod ``pod``'s ``/_control`` at ``at_fraction`` of the run."""

    at_fraction: float
    pod: int
    change: Mapping[str, object]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    mode: Literal["open", "closed"] = "open"
    upstream: Literal["pods", "static"] = "pods"
    pods: tuple[PodSpec, ...] = ()
    rate_rps: float = 240.0
    end_rate_rps: float | None = None  # a linear ramp from rate_rps when set
    faults: tuple[Fault, ...] = ()
    trouble: bool = False  # counts toward the "p99 at most 0.8x the best peer" target
    peers: tuple[str, ...] = TROUBLE_PEERS


def service_floor_p99_s(scenario: Scenario) -> float | None:
    """The p99 of a request's own service time on the fleet's fastest pods, with no queueing.

    No balancer that sends each request once can have a lower p99 (only hedging, which
    duplicates work, could), so a target below it cannot be met. Lognormal with the pods' mean,
    as :mod:`loadtests.fakepod` draws it; None without pods.
    """
    if not scenario.pods:
        return None
    fastest = min(scenario.pods, key=lambda pod: pod.service_ms * pod.slow_factor)
    mean_s = fastest.service_ms * fastest.slow_factor / 1000
    if fastest.sigma <= 0:
        return mean_s
    mu = lognormal_mu(mean_s, fastest.sigma)
    return math.exp(mu + NormalDist().inv_cdf(0.99) * fastest.sigma)


def _three(**slow: float) -> tuple[PodSpec, ...]:
    return tuple(PodSpec(name, slow_factor=slow.get(name, 1.0)) for name in ("a", "b", "c"))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("slow-pod", "one pod 4x slower", pods=_three(c=4.0), trouble=True),
        Scenario(
            "errors",
            "a pod turns to 500s at 1/3",
            pods=_three(),
            faults=(Fault(1 / 3, 1, {"error_rate": 1.0}),),
            trouble=True,
        ),
        Scenario(
            "hang",
            "a pod hangs at 1/3",
            pods=_three(),
            faults=(Fault(1 / 3, 1, {"hang": True}),),
            trouble=True,
        ),
        Scenario(
            "gc-pauses",
            "a pod pauses 300 ms every 2 s",
            pods=(
                PodSpec("a"),
                PodSpec("b", faults={"pause_every_s": 2.0, "pause_for_s": 0.3}),
                PodSpec("c"),
            ),
            trouble=True,
        ),
        Scenario(
            "ramp",
            "48 to 528 rps (10% to 110% of capacity)",
            pods=_three(),
            rate_rps=48.0,
            end_rate_rps=528.0,
        ),
        Scenario(
            "overhead-open",
            "fast upstream, open loop at 1,000 rps",
            upstream="static",
            rate_rps=1000.0,
            peers=OVERHEAD_PEERS,
        ),
        Scenario(
            "overhead-closed",
            "fast upstream, closed loop (wrk, 64 connections)",
            mode="closed",
            upstream="static",
            peers=OVERHEAD_PEERS,
        ),
    )
}
