"""Balance: choose one endpoint among the healthy candidates, by a policy named in the config.

:data:`POLICIES` is the one registry: a new policy is one module plus one entry here (the
config accepts every name registered, the simulator and ``bench_pick`` compare them all).

Build one policy per backend group: policies that cache a fleet reference or a schedule
(everything but least_request) hold it for the candidates they were last refreshed with.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.balancer.base import Candidate, Policy, SimpleCandidate
from gateway.balancer.least_request import LeastRequest
from gateway.balancer.peak_ewma import PeakEwma
from gateway.balancer.prefix_aware import PrefixAware
from gateway.balancer.random_pick import RandomPick
from gateway.balancer.round_robin import RoundRobin
from gateway.balancer.settings import BalancerSettings
from gateway.balancer.weighted_score import WeightedScore

POLICIES: dict[str, Callable[[BalancerSettings], Policy]] = {
    "weighted_score": lambda s: WeightedScore(s.alpha, s.beta, s.selection, s.default_latency_s),
    "round_robin": lambda s: RoundRobin(),
    "random": lambda s: RandomPick(),
    "least_request": lambda s: LeastRequest(),
    "peak_ewma": lambda s: PeakEwma(s.default_latency_s),
    "prefix_aware": lambda s: PrefixAware(
        s.alpha,
        s.beta,
        s.default_latency_s,
        s.prefix_capacity_blocks,
        s.load_bound,
        s.session_affinity,
        s.prefix_queue_weight,
    ),
}

# Policies that read the prompt's block hashes (RequestInfo.blocks): only for them does the
# handler hash a prompt.
READS_PROMPT_BLOCKS = frozenset({"prefix_aware"})


def build_policy(settings: BalancerSettings) -> Policy:
    """A fresh policy object for one backend group."""
    factory = POLICIES.get(settings.policy)
    if factory is None:
        raise ValueError(f"balancer.policy: {settings.policy!r} is not one of {tuple(POLICIES)}")
    return factory(settings)


__all__ = [
    "POLICIES",
    "READS_PROMPT_BLOCKS",
    "BalancerSettings",
    "Candidate",
    "Policy",
    "SimpleCandidate",
    "build_policy",
]
