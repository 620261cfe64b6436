"""The pick: which backend of a group takes this try, under the per-backend limit. Pure.

Called by the capacity module (``gateway.capacity``) for a newly arrived request and for the
head of the pending queue when a slot frees.
"""

from __future__ import annotations

import random
from typing import cast

from gateway.balancer.base import Policy
from gateway.capacity import NoPick
from gateway.endpoint import Endpoint
from gateway.fleet import Fleet
from gateway.request_info import RequestInfo


def select_endpoint(
    fleet: Fleet,
    policy: Policy,
    group: str,
    tried: list[str],
    max_requests: int,
    now: float,
    rng: random.Random,
    request: RequestInfo | None = None,
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
        endpoint = cast(Endpoint, policy.pick(pool, now, rng, request))
        if endpoint.load >= max_requests:
            roomy = [c for c in pool if c.load < max_requests]
            if not roomy:
                return NoPick.ALL_FULL
            endpoint = cast(Endpoint, policy.pick(roomy, now, rng, request))
        if panic or endpoint.health.try_acquire(now):
            return endpoint
        fleet.invalidate()
    return NoPick.NO_BACKEND
