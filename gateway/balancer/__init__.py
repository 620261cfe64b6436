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
from gateway.balancer.weighted_score import WeightedScore
from gateway.config.model import BalancerConfig

# Each entry builds its policy from the ``balancer:`` section (validated there, once).
POLICIES: dict[str, Callable[[BalancerConfig], Policy]] = {
    "weighted_score": lambda c: WeightedScore(c.alpha, c.beta, c.selection, c.default_latency),
    "round_robin": lambda c: RoundRobin(),
    "random": lambda c: RandomPick(),
    "least_request": lambda c: LeastRequest(),
    "peak_ewma": lambda c: PeakEwma(c.default_latency),
    "prefix_aware": lambda c: PrefixAware(
        c.alpha,
        c.beta,
        c.default_latency,
        c.prefix.capacity_blocks,
        c.prefix.load_bound,
        c.prefix.session_affinity,
        c.prefix.queue_weight,
        max_blocks=c.prefix.max_blocks,
    ),
}

# Policies that read the prompt's block hashes (RequestInfo.blocks): only for them does the
# handler hash a prompt.
READS_PROMPT_BLOCKS = frozenset({"prefix_aware"})


def build_policy(config: BalancerConfig) -> Policy:
    """A fresh policy object for one backend group (``config.policy`` is a registered name: the
    config validated it against :data:`POLICIES`)."""
    return POLICIES[config.policy](config)


__all__ = [
    "POLICIES",
    "READS_PROMPT_BLOCKS",
    "Candidate",
    "Policy",
    "SimpleCandidate",
    "build_policy",
]
