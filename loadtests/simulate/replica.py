"""One gateway replica: a real :class:`gateway.runtime.Runtime` living on virtual time.

The replica owns no balancing or health logic of its own. It builds the gateway's Runtime (its
own fleet of Endpoints, signals, policy, outlier detector, retry budget) with the simulator's
clock and a per-replica RNG, and makes, at the simulator's instants, the calls the gateway's
request path makes in ``gateway.selection`` (``select_endpoint`` for the pick,
``retry_allowed`` for a retry), and wraps every try in the gateway's own
:class:`gateway.attempt.Attempt`, so outcomes and latency samples are recorded by the very
code that records them in production.

Two deliberate differences, both only for speed and neither changing a decision:
  * Attempts get :class:`DiscardMetrics` instead of Prometheus families (metrics are write-only).
  * Outcomes go to the outlier detector with a list of the group's healths built once, where
    ``Runtime.record_outcome`` rebuilds it on every outcome (O(M) per request).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import cast

from gateway.attempt import Attempt
from gateway.config.model import BackendConfig, GatewayConfig
from gateway.endpoint import Endpoint
from gateway.health.outcome import Outcome
from gateway.health.transition import Transition
from gateway.metrics import GatewayMetrics
from gateway.runtime import Runtime
from gateway.selection import NoPick, retry_allowed, select_endpoint
from loadtests.simulate.scenarios import PodSpec

GROUP = "default"


class _Discard:
    """A metric family and its children at once: every call does nothing."""

    __slots__ = ()

    def labels(self, *values: str) -> _Discard:
        return self

    def __call__(self, *values: str) -> _Discard:  # as GatewayMetrics' cached Children
        return self

    def observe(self, value: float) -> None:
        return None

    def inc(self, amount: float = 1.0) -> None:
        return None


class DiscardMetrics:
    """The families an :class:`Attempt` writes, discarding every value."""

    __slots__ = ()
    time_to_first_byte_for = _Discard()
    upstream_latency_for = _Discard()
    upstream_failures_for = _Discard()


def pod_name(index: int) -> str:
    return f"pod-{index}"


def simulated_config(
    base: GatewayConfig, pods: Sequence[PodSpec], **balancer: object
) -> GatewayConfig:
    """`base` with the simulated pods as its backends and `balancer` fields overridden."""
    backends = tuple(
        BackendConfig(url=f"http://{pod_name(i)}.sim:8000", name=pod_name(i), weight=p.weight)
        for i, p in enumerate(pods)
    )
    return dataclasses.replace(
        base,
        backends=backends,
        discovery=None,
        routes=(),
        balancer=dataclasses.replace(base.balancer, **balancer),  # type: ignore[arg-type]
    )


class GatewayReplica:
    """One of the G gateways: its own signals and health view of the same M backends."""

    __slots__ = ("_healths", "_metrics", "endpoints", "index", "runtime")

    def __init__(
        self, index: int, config: GatewayConfig, clock: Callable[[], float], rng: random.Random
    ) -> None:
        self.index = index
        self.runtime = Runtime(config, clock=clock, rng=rng)
        self.endpoints: list[Endpoint] = list(self.runtime.fleet.groups[GROUP])
        self._healths = [e.health for e in self.endpoints]
        self._metrics = cast(GatewayMetrics, DiscardMetrics())

    # -- the request path (after gateway.handler.ProxyHandler) ----------------------------------

    def acquire(self, tried: list[str], now: float) -> Endpoint | None:
        """The gateway's own pick (``gateway.selection.select_endpoint``); None where it sheds.

        Where every candidate is at ``max_requests_per_backend`` the gateway queues the request
        (admission control); the simulator sheds it instead and counts it as failed.
        """
        rt = self.runtime
        picked = select_endpoint(
            rt.fleet,
            rt.policy_for(GROUP),
            GROUP,
            tried,
            rt.config.limits.max_requests_per_backend,
            now,
            rt.rng,
        )
        return None if isinstance(picked, NoPick) else picked

    def begin(self, endpoint: Endpoint) -> Attempt:
        """Enter the gateway's Attempt for one try (counts it in flight)."""
        rt = self.runtime
        attempt = Attempt(
            endpoint, rt.clock, self._metrics, self._record_outcome, rt.capacity_freed
        )
        attempt.__enter__()
        return attempt

    def record_request(self, now: float) -> None:
        """An original (not retried) request arrived: it funds the retry budget."""
        self.runtime.retry_budget.record_request(now)

    def may_retry(
        self, condition: str | int, reached_upstream: bool, number: int, now: float
    ) -> bool:
        """The gateway's own rule (``gateway.selection.retry_allowed``) for an inference POST
        with a replayable body."""
        rt = self.runtime
        allowed = retry_allowed(
            condition,
            reached_upstream,
            "POST",
            True,
            number,
            rt.config.retries,
            None,
            rt.retry_budget,
            now,
        )
        return bool(allowed)

    def backoff_s(self, number: int) -> float:
        """tenacity's ``wait_random_exponential`` as the handler configures it, on our RNG."""
        retries = self.runtime.config.retries
        high = min(retries.backoff_max, retries.backoff_base * 2 ** (number - 1))
        return self.runtime.rng.uniform(0.0, high)

    # -- background upkeep (after gateway.maintenance and gateway.probes) ----------------------

    def refresh(self) -> None:
        """Every 250 ms: the policies' fleet reference."""
        self.runtime.refresh_policies()

    def sweep(self, now: float) -> None:
        """Every ``outlier_detection.interval``: the detector's sweep."""
        if self.runtime.config.outlier_detection.enabled:
            self.runtime.detector.sweep(self._healths, now)

    def probe(self, ready: Sequence[bool], now: float) -> None:
        """One round of active health checks; ``ready[i]`` is pod i's /ready verdict."""
        for health, passed in zip(self._healths, ready, strict=True):
            if health.active is not None:
                health.active.record(passed, now)

    def report_depths(self, depths: Sequence[float], now: float) -> None:
        """A /metrics scrape of every pod arrives (values possibly taken earlier)."""
        for endpoint, depth in zip(self.endpoints, depths, strict=True):
            endpoint.signals.report_queue_depth(depth, now)

    def _record_outcome(
        self, endpoint: Endpoint, outcome: Outcome, now: float
    ) -> Transition | None:
        return self.runtime.detector.on_outcome(endpoint.health, self._healths, outcome, now)
