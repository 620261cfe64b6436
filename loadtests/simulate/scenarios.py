"""What is simulated: the backends' behaviour, the offered load and how signals reach gateways.

Pods mirror ``loadtests.fakepod``: ``slots`` concurrent requests, a FIFO queue of at most
``max_queue``, a mean service time ``service_s`` scaled by ``slow_factor``, and faults
(``error_rate``/``error_status``, ``hang``, periodic pauses) that apply from ``fault_from_s``.
Scenarios with one misbehaving pod give that role to one pod in ten (at least one), so that
M = 4 has one bad pod as in the real loadtests and M = 1000 has 100, not a negligible 0.1%.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

DISTRIBUTIONS = ("lognormal", "bimodal", "fixed")


@dataclass(frozen=True, slots=True)
class PodSpec:
    """One backend. Times in seconds; the faults are off until ``fault_from_s``."""

    slots: int = 4
    service_s: float = 0.020
    max_queue: int = 1024
    weight: float = 1.0
    slow_factor: float = 1.0
    error_rate: float = 0.0
    error_status: int = 500
    hang: bool = False
    down: bool = False  # connection refused
    pause_every_s: float = 0.0
    pause_for_s: float = 0.0
    fault_from_s: float = 0.0

    @property
    def capacity_rps(self) -> float:
        """Requests per second the pod serves when healthy and saturated."""
        return self.slots / self.service_s

    @property
    def fails(self) -> bool:
        """Does the pod fail every request once its fault is on (the oracle avoids it)?"""
        return self.hang or self.down or self.error_rate >= 1.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """A fleet and its traffic.

    ``load`` is the offered rate as a share of the fleet's fault-free capacity (a ramp goes
    linearly from ``load`` to ``ramp_to``). Each gateway learns a pod's queue depth from the
    ``X-Queue-Depth`` header of its own responses (``header_depth``) and, when
    ``scrape_interval_s`` > 0, from /metrics scrapes whose values reach every gateway
    ``scrape_delay_s`` after they were taken.
    """

    name: str
    pods: tuple[PodSpec, ...]
    dist: str = "lognormal"
    sigma: float = 0.5
    load: float = 0.7
    ramp_to: float | None = None
    header_depth: bool = True
    scrape_interval_s: float = 0.0
    scrape_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.pods:
            raise ValueError("a scenario needs at least one pod")
        if self.dist not in DISTRIBUTIONS:
            raise ValueError(f"dist: {self.dist!r} is not one of {DISTRIBUTIONS}")
        if not self.load > 0 or (self.ramp_to is not None and not self.ramp_to > 0):
            raise ValueError("load and ramp_to must be > 0")
        if self.scrape_interval_s < 0 or self.scrape_delay_s < 0:
            raise ValueError("scrape_interval_s and scrape_delay_s must be >= 0")

    @property
    def capacity_rps(self) -> float:
        return sum(p.capacity_rps for p in self.pods)

    @property
    def fault_from_s(self) -> float:
        """When the faults start (the latest start among pods, 0 if none)."""
        return max((p.fault_from_s for p in self.pods), default=0.0)


def _bad_count(backends: int) -> int:
    return max(1, round(backends / 10))


def _with_bad(backends: int, pod: PodSpec, **fault: object) -> tuple[PodSpec, ...]:
    bad = dataclasses.replace(pod, **fault)  # type: ignore[arg-type]
    n_bad = _bad_count(backends)
    return tuple(bad if i < n_bad else pod for i in range(backends))


def _heterogeneous(backends: int, pod: PodSpec) -> tuple[PodSpec, ...]:
    # Equal weights (the gateway is not told), speeds 0.5x .. 2x of the mean service time.
    factors = (0.5, 1.0, 1.0, 2.0)
    return tuple(
        dataclasses.replace(pod, service_s=pod.service_s * factors[i % 4]) for i in range(backends)
    )


Builder = Callable[[int, PodSpec, float], Scenario]

SCENARIOS: dict[str, Builder] = {
    "baseline": lambda m, p, load: Scenario("baseline", (p,) * m, load=load),
    "heterogeneous": lambda m, p, load: Scenario("heterogeneous", _heterogeneous(m, p), load=load),
    "slow_pod": lambda m, p, load: Scenario(
        "slow_pod", _with_bad(m, p, slow_factor=5.0), load=load
    ),
    "failing_pod": lambda m, p, load: Scenario(
        "failing_pod", _with_bad(m, p, error_rate=1.0), load=load
    ),
    "hanging_pod": lambda m, p, load: Scenario(
        "hanging_pod", _with_bad(m, p, hang=True), load=load
    ),
    "pausing_pod": lambda m, p, load: Scenario(
        "pausing_pod", _with_bad(m, p, pause_every_s=2.0, pause_for_s=0.5), load=load
    ),
    "stale_scrape": lambda m, p, load: Scenario(
        "stale_scrape",
        _with_bad(m, p, slow_factor=5.0),
        load=load,
        header_depth=False,
        scrape_interval_s=1.0,
        scrape_delay_s=1.0,
    ),
    "bimodal": lambda m, p, load: Scenario("bimodal", (p,) * m, dist="bimodal", load=load),
    "ramp": lambda m, p, load: Scenario("ramp", (p,) * m, load=0.3, ramp_to=min(0.98, load + 0.25)),
}


def build_scenario(
    name: str, backends: int, load: float = 0.7, pod: PodSpec | None = None
) -> Scenario:
    """The named scenario for `backends` pods like `pod` (fakepod's defaults if None)."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    if backends < 1:
        raise ValueError("backends must be >= 1")
    return SCENARIOS[name](backends, pod or PodSpec(), load)
