"""One gateway replica: a real :class:`gateway.runtime.Runtime` living on virtual time.

The replica owns no balancing, admission or health logic of its own. It builds the gateway's
Runtime (its own fleet of Endpoints, signals, policy, capacity and pending queue, outlier
detector, retry budget) with the simulator's clock and a per-replica RNG, and opens one
:class:`gateway.exchange.Exchange` per request: the simulator then drives that core exactly as
the aiohttp handler does (admit, start a try, ask it whether to retry, back off by its rule), so
picks, queueing, outcomes and latency samples come from the very code that makes them in
production.

One deliberate difference, only for speed and changing no decision: the Runtime gets
:class:`DiscardMetrics` instead of Prometheus families (metrics are write-only).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import cast

from gateway.config.model import BackendConfig, GatewayConfig
from gateway.endpoint import Endpoint
from gateway.exchange import Exchange, open_exchange
from gateway.metrics import GatewayMetrics
from gateway.request_info import NO_INFO
from gateway.runtime import Runtime
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

    def dec(self, amount: float = 1.0) -> None:
        return None

    def set(self, value: float) -> None:
        return None


_DISCARD = _Discard()


class DiscardMetrics:
    """Every family of :class:`GatewayMetrics`, discarding every value."""

    __slots__ = ()

    def __getattr__(self, name: str) -> _Discard:
        return _DISCARD


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

    __slots__ = ("_healths", "endpoints", "index", "runtime")

    def __init__(
        self, index: int, config: GatewayConfig, clock: Callable[[], float], rng: random.Random
    ) -> None:
        self.index = index
        metrics = cast(GatewayMetrics, DiscardMetrics())
        self.runtime = Runtime(config, metrics=metrics, clock=clock, rng=rng)
        self.endpoints: list[Endpoint] = list(self.runtime.fleet.groups[GROUP])
        self._healths = [e.health for e in self.endpoints]

    # -- the request path: the gateway's own core ------------------------------------------------

    def open(self, now: float) -> Exchange:
        """A newly arrived inference POST, routed and counted, as the handler opens it."""
        return open_exchange(self.runtime, "POST", "/v1/completions", {}, NO_INFO, now)

    # -- background upkeep (after gateway.maintenance and gateway.probes) ----------------------

    def refresh(self) -> None:
        """Every 250 ms: the policies' fleet reference."""
        self.runtime.refresh_policies()

    def sweep(self, now: float) -> None:
        """Every ``outlier_detection.interval``: the detector's sweep."""
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
