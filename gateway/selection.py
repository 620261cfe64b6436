"""The synchronous decisions of the request path, as pure functions.

Which backend takes this try, and may a failed try be retried? Kept free of I/O and asyncio so
that the request handler and the fleet simulator (``loadtests/simulate``) run the very same
code.
"""

from __future__ import annotations

import enum
import random
from typing import cast

from gateway.balancer.base import Policy
from gateway.config.model import RetriesConfig
from gateway.endpoint import Endpoint
from gateway.fleet import Fleet
from gateway.retry_budget import RetryBudget

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class NoPick(enum.Enum):
    NO_BACKEND = "no_backend"  # nothing routable in the group: shed
    ALL_FULL = "all_full"  # every candidate at max_requests_per_backend: queue or shed


def select_endpoint(
    fleet: Fleet,
    policy: Policy,
    group: str,
    tried: list[str],
    max_requests: int,
    now: float,
    rng: random.Random,
) -> Endpoint | NoPick:
    """The endpoint that takes this try, its circuit permit already taken (unless in panic).

    Prefers backends this request has not tried yet (a retry goes elsewhere when it can), skips
    backends at ``max_requests``, and rebuilds the cached candidate list when a circuit refuses
    (the cache may be up to ``fleet.refresh_s`` old).
    """
    for _ in range(8):
        candidates, panic = fleet.candidates(group, now)
        if not candidates:
            return NoPick.NO_BACKEND
        pool = candidates
        if tried:
            pool = [c for c in candidates if c.name not in tried] or candidates
        endpoint = cast(Endpoint, policy.pick(pool, now, rng))
        if endpoint.signals.in_flight >= max_requests:
            roomy = [c for c in pool if c.signals.in_flight < max_requests]
            if not roomy:
                return NoPick.ALL_FULL
            endpoint = cast(Endpoint, policy.pick(roomy, now, rng))
        if panic or endpoint.health.try_acquire(now):
            return endpoint
        fleet.invalidate()
    return NoPick.NO_BACKEND


def retry_allowed(
    condition: str | int,
    reached_upstream: bool,
    method: str,
    body_replayable: bool,
    attempt_number: int,
    retries: RetriesConfig,
    route_opt_in: bool | None,
    budget: RetryBudget,
    now: float,
) -> bool | None:
    """May a failed try be retried? True (budget spent), False, or None when only the budget
    said no (so the caller can count it).

    ``condition`` is ``connect-failure``, ``reset``, ``timeout`` or a status code.
    """
    if attempt_number >= retries.attempts or not body_replayable:
        return False
    if condition not in retries.retry_on:
        return False
    opted_in = route_opt_in if route_opt_in is not None else retries.retry_non_idempotent
    if reached_upstream and method not in IDEMPOTENT and not opted_in:
        return False
    if not budget.try_spend(now):
        return None
    return True
