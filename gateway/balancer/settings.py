"""The balancer's settings, built by the config layer from the `balancer:` YAML section."""

from __future__ import annotations

from dataclasses import dataclass

SELECTIONS = ("best", "p2c")


@dataclass(frozen=True)
class BalancerSettings:
    """`alpha` and `beta` weigh the latency and queue terms of `weighted_score`; `selection`
    applies to it only (least_request and peak_ewma always use power of two choices);
    `default_latency_s` is the prior until any endpoint of the fleet has been measured; the
    `prefix_*` (``prefix_queue_weight``: the queue term's share for requests with a prompt),
    `load_bound` and `session_affinity` fields are prefix_aware's."""

    policy: str = "weighted_score"
    alpha: float = 0.6
    beta: float = 0.4
    selection: str = "p2c"
    default_latency_s: float = 0.1
    prefix_capacity_blocks: int = 4096
    load_bound: float = 1.0
    prefix_queue_weight: float = 0.1
    session_affinity: bool = False

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"balancer.selection: {self.selection!r} is not one of {SELECTIONS}")
        if not (self.alpha >= 0 and self.beta >= 0 and self.alpha + self.beta > 0):
            raise ValueError("balancer.alpha and balancer.beta must be >= 0 and not both 0")
        if not self.default_latency_s > 0:
            raise ValueError("balancer.default_latency_s must be > 0")
        if self.prefix_capacity_blocks < 1 or not self.load_bound >= 0:
            raise ValueError("balancer.prefix: capacity_blocks must be >= 1, load_bound >= 0")
        if not self.prefix_queue_weight >= 0:
            raise ValueError("balancer.prefix.queue_weight must be >= 0")
