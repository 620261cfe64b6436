"""Periodic upkeep that must not run on the request path.

* every ``outlier_detection.interval``: the outlier detector's sweep (success-rate ejection,
  ejection-multiplier decay), per group;
* every 250 ms: each group policy's fleet reference (medians), so a P2C pick stays O(1);
* every second: per-backend gauges (in-flight, queue depth, latency, score, circuit state)
  and per-tenant rate-limit gauges;
* every ``admission.api_keys.reload_interval``: the API keys file, reread if it changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gateway.health.transition import CircuitState
from gateway.metrics import CIRCUIT_STATE_VALUE
from gateway.runtime import Runtime

log = logging.getLogger("tailgate")

POLICY_REFRESH_S = 0.25
PUBLISH_S = 1.0


def publish_gauges(runtime: Runtime) -> None:
    now = runtime.clock()
    m = runtime.metrics
    for group, members in runtime.fleet.groups.items():
        policy = runtime.policy_for(group)
        prior_s = runtime.prior_latency_s(group)
        for endpoint in members:
            name = endpoint.name
            snapshot = endpoint.signals.snapshot(now, prior_s)
            m.in_flight.labels(name).set(snapshot["in_flight"] or 0)
            m.queue_depth.labels(name).set(snapshot["queue_depth"] or 0.0)
            if snapshot["reported_queue_depth"] is not None:
                m.reported_queue_depth.labels(name).set(snapshot["reported_queue_depth"])
            m.latency_estimate.labels(name).set(snapshot["latency_s"] or 0.0)
            score = policy.score(endpoint, now)
            if score is not None:
                m.score.labels(name).set(score)
            m.routable.labels(name).set(1 if endpoint.routable(now) else 0)
            state = endpoint.health.state
            if isinstance(state, CircuitState):
                m.circuit_state.labels(name).set(CIRCUIT_STATE_VALUE[state.value])


class Maintenance:
    """The background loops above, started and stopped together."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(
                self._every(lambda: POLICY_REFRESH_S, self._refresh), name="refresh"
            ),
            asyncio.create_task(self._every(lambda: PUBLISH_S, self._publish), name="publish"),
            asyncio.create_task(
                self._every(lambda: self.runtime.detector.config.interval, self._sweep),
                name="outlier-sweep",
            ),
            asyncio.create_task(
                self._every(
                    lambda: self.runtime.config.admission.api_keys.reload_interval,
                    self._reload_keys,
                ),
                name="api-keys-reload",
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _every(self, period_s: Callable[[], float], action: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(period_s())
            try:
                action()
            except Exception:  # a bug here must not stop upkeep for good
                log.exception("background task failed")

    def _refresh(self) -> None:
        self.runtime.refresh_policies()

    def _publish(self) -> None:
        publish_gauges(self.runtime)
        self.runtime.tenant_gate.publish(self.runtime.clock())

    def _reload_keys(self) -> None:
        keys_file = self.runtime.tenant_gate.keys_file
        if keys_file is not None:
            keys_file.reload_if_changed()

    def _sweep(self) -> None:
        rt = self.runtime
        now = rt.clock()
        for members in rt.fleet.groups.values():
            rt.detector.sweep([e.health for e in members], now)
