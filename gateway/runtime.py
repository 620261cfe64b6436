"""The gateway's state as one object built from the config: no hidden globals.

:class:`Runtime` owns the fleet (endpoints with their signals and health), the balancing
policy, the route table, the retry budget, admission control, the metrics and the pooled
upstream HTTP client. :meth:`Runtime.reconfigure` swaps in a new validated config while the
fleet keeps the state of every backend that stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable

import aiohttp

from gateway.balancer import READS_PROMPT_BLOCKS, build_policy
from gateway.balancer.base import Policy
from gateway.cache import ResponseCache
from gateway.capacity import Capacity, NoPick, Ticket
from gateway.config.model import GatewayConfig, HealthCheckConfig
from gateway.endpoint import Endpoint
from gateway.exchange import SafePaths
from gateway.fleet import BackendSpec, Fleet
from gateway.health.circuit import EndpointHealth
from gateway.health.outcome import Outcome
from gateway.health.outlier import OutlierDetector
from gateway.health.transition import CheckState, CircuitState, Transition
from gateway.hedging import Hedging
from gateway.load.signals import EndpointSignals
from gateway.metrics import GatewayMetrics
from gateway.pending_queue import FairQueue, FairShare
from gateway.request_info import RequestInfo
from gateway.retry_budget import RetryBudget
from gateway.routing import Router
from gateway.selection import select_endpoint
from gateway.tenants import TenantGate
from gateway.tracing import Tracer, build_tracer
from gateway.upstream import UpstreamClient

log = logging.getLogger("tailgate")


def opaque_label(url: str) -> str:
    """A stable name for a backend the operator did not name, that does not reveal its address."""
    return "backend-" + hashlib.sha256(url.encode()).hexdigest()[:8]


def backend_specs(config: GatewayConfig) -> list[BackendSpec]:
    return [
        BackendSpec(b.display_name, b.url, b.weight, b.group, configured_name=b.name is not None)
        for b in config.backends
    ]


class Runtime:
    """Everything a request needs, built from one validated config."""

    config: GatewayConfig
    retry_budget: RetryBudget
    hedging: Hedging
    capacity: Capacity[Endpoint]
    cache: ResponseCache
    tracer: Tracer | None

    def __init__(
        self,
        config: GatewayConfig,
        metrics: GatewayMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self.metrics = metrics or GatewayMetrics()
        self.draining = False
        self.session: aiohttp.ClientSession | None = None  # health checks and scrapes
        self.upstream: UpstreamClient | None = None  # the forwarding path
        self.fleet = Fleet(self._make_endpoint, config.outlier_detection.panic_threshold)
        self.fair_share = FairShare()  # every group queue's weights and sheddable limit
        self.tenant_gate = TenantGate(config, self.metrics)
        self._install(config)
        if config.backends:
            self.fleet.apply(backend_specs(config), self.clock())

    # -- configuration -------------------------------------------------------------------------

    def _install(self, config: GatewayConfig) -> None:
        """Build the components of ``config`` (each from its own section) and swap them in.

        A component whose section did not change is kept with what it learned (the group
        policies and prefix_aware's index, the retry and hedge budgets, the hedge delays);
        every backend keeps its signals and health (:meth:`reconfigure`).
        """
        old: GatewayConfig | None = getattr(self, "config", None)
        self.config = config
        if old is None or old.balancer != config.balancer:
            # One per group, built on first use: each caches its fleet reference (and
            # prefix_aware its index of what each backend holds, kept while unchanged).
            self.policies: dict[str, Policy] = {}
        self.wants_blocks = config.balancer.policy in READS_PROMPT_BLOCKS
        self.detector = OutlierDetector(config.outlier_detection)
        self.router = Router(config.routes)
        self.safe_paths = SafePaths(config.retries.safe_paths)
        retries = config.retries
        if old is None or (old.retries.budget_percent, old.retries.min_retries_per_second) != (
            retries.budget_percent,
            retries.min_retries_per_second,
        ):
            self.retry_budget = RetryBudget(retries.budget_percent, retries.min_retries_per_second)
        if old is None or old.hedging != config.hedging:
            self.hedging = Hedging(config.hedging)
        if old is None:
            self.capacity = Capacity(
                config.limits, self._pick, lambda limit: FairQueue(limit, self.fair_share)
            )
        else:  # keep the requests already queued
            self.capacity.settings = config.limits
        if old is None:
            self.cache = ResponseCache(config.cache, self.metrics, self.clock)
        else:  # keep the answers that still fit
            self.cache.apply(config.cache)
        self.tenant_gate.install(config)  # buckets and the keys file survive a reload
        self.fair_share.weights.clear()  # in place: the queues hold this dict
        self.fair_share.weights.update(self.tenant_gate.directory.weights)
        self.fair_share.sheddable_limit = config.admission.sheddable_max_pending
        self.fleet.panic_threshold_percent = config.outlier_detection.panic_threshold
        if old is None or old.tracing != config.tracing:
            self._swap_tracer(build_tracer(config.tracing, self.rng))

    def _swap_tracer(self, tracer: Tracer | None) -> None:
        """Install ``tracer``; the one it replaces flushes its spans on a thread of its own, so
        a reload never waits on a collector."""
        old: Tracer | None = getattr(self, "tracer", None)
        self.tracer = tracer
        if old is not None:
            threading.Thread(target=old.close, name="tailgate-tracer-close", daemon=True).start()

    async def close_tracer(self) -> None:
        """Flush the exporter's last spans (at shutdown), off the event loop."""
        tracer, self.tracer = self.tracer, None
        if tracer is not None:
            await asyncio.to_thread(tracer.close)

    def reconfigure(self, config: GatewayConfig, specs: list[BackendSpec] | None = None) -> None:
        """Swap in ``config`` (already validated). Backends that stay keep signals and health.

        Each backend that stays takes the new sections through its signals' and health's own
        ``reconfigure`` (new thresholds apply at once; counters, circuit and estimates stay).
        """
        self._install(config)
        for endpoint in self.fleet.endpoints.values():
            endpoint.signals.reconfigure(config.balancer, config.timeouts.per_try)
            endpoint.health.reconfigure(
                config.outlier_detection, config.circuit_breaker, self._active_checks(config)
            )
        static = config.discovery is None or config.discovery.type == "static"
        if specs is None and static:
            specs = backend_specs(config)
        if specs is not None:
            self.apply_backends(specs)

    def apply_backends(self, specs: list[BackendSpec]) -> None:
        added, removed = self.fleet.apply(specs, self.clock())
        for name in removed:
            self._forget_labels(name)
        if removed and self.upstream is not None:
            self.upstream.retain({endpoint.url for endpoint in self.fleet.endpoints.values()})
        if added or removed:
            log.info("backends changed: added=%s removed=%s", added, removed)
        self.refresh_policies()
        self.metrics.backends.set(len(self.fleet.endpoints))

    def policy_for(self, group: str) -> Policy:
        policy = self.policies.get(group)
        if policy is None:
            policy = self.policies[group] = build_policy(self.config.balancer)
            policy.refresh(self.fleet.groups.get(group, []), self.clock())
        return policy

    def prior_latency_s(self, group: str) -> float:
        """The latency an unmeasured backend of ``group`` is assumed to have: the fleet median
        its policy keeps, or the configured default for policies that keep none."""
        reference = getattr(self.policy_for(group), "fleet", None)
        return (
            reference.latency_s if reference is not None else self.config.balancer.default_latency
        )

    def refresh_policies(self) -> None:
        """Recompute each group's fleet reference (medians); called periodically."""
        now = self.clock()
        for group in self.fleet.groups:
            candidates, _ = self.fleet.candidates(group, now)  # ejected ones would skew medians
            self.policy_for(group).refresh(candidates, now)

    def _make_endpoint(self, spec: BackendSpec, now: float) -> Endpoint:
        config = self.config
        health = EndpointHealth(
            config.outlier_detection,
            config.circuit_breaker,
            self._active_checks(config),
            name=spec.name,
            listener=self._on_transition,
        )
        signals = EndpointSignals(config.balancer, now, config.timeouts.per_try)
        public = spec.name if spec.configured_name else opaque_label(spec.url)
        return Endpoint(spec.name, spec.url, spec.weight, spec.group, signals, health, public)

    @staticmethod
    def _active_checks(config: GatewayConfig) -> HealthCheckConfig | None:
        """The ``health_check:`` section when it turns probing on, else None."""
        return config.health_check if config.health_check.enabled else None

    def _forget_labels(self, name: str) -> None:
        """Drop a removed backend's per-backend gauges.

        prometheus-client cannot remove labels in multiprocess mode (``--workers``); there
        the gauges are zeroed instead (routable 0, nothing in flight), which is what they mean
        for a backend that is gone.
        """
        multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        for gauge in self.metrics.per_backend_gauges:
            if multiprocess:
                gauge.labels(name).set(0)
            else:
                with contextlib.suppress(KeyError):
                    gauge.remove(name)

    # -- outcomes ------------------------------------------------------------------------------

    def record_outcome(self, endpoint: Endpoint, outcome: Outcome, now: float) -> Transition | None:
        """Land one try's outcome on the endpoint's health (the detector sees the fleet), and
        on a failure tell a policy with a prefix index (its optional ``failed`` hook)."""
        if outcome.is_failure:
            failed = getattr(self.policy_for(endpoint.group), "failed", None)
            if failed is not None:
                failed(endpoint.name, now)
        fleet = self.fleet.group_healths.get(endpoint.group, ())
        return self.detector.on_outcome(endpoint.health, fleet, outcome, now)

    def work_sent(
        self, group: str, endpoint: Endpoint, request: RequestInfo, first_try: bool = True
    ) -> tuple[int, int]:
        """A try of ``request`` goes to ``endpoint``: the (prefill, decode) tokens it puts there.

        A policy with a prefix index learns here what was sent where (its optional ``sent``
        hook: learning at send on the first try only), and says how much of the prompt it
        expects cached there already.
        """
        if request.prompt_tokens <= 0:
            return 0, 0
        sent = getattr(self.policy_for(group), "sent", None)
        cached = sent(endpoint.name, request, first_try) if sent is not None else 0
        return request.prompt_tokens - cached, request.output_tokens

    def answer_relayed(self, group: str, backend: str, request: RequestInfo, answer: str) -> None:
        """``backend`` streamed ``answer`` (whole) to ``request``: a policy with a prefix index
        learns that the backend now caches the prompt and the answer (its ``answered`` hook)."""
        answered = getattr(self.policy_for(group), "answered", None)
        if answered is not None:
            answered(backend, request, answer)

    def capacity_freed(self, endpoint: Endpoint) -> None:
        """A try at ``endpoint`` finished: its slot goes to the head of its group's queue."""
        if self.capacity.pending:
            self.capacity.release(endpoint.group, self.clock())

    def _pick(self, ticket: Ticket[Endpoint], now: float) -> Endpoint | NoPick:
        """The capacity module's pick: the group's policy over backends with room. The pick
        reserves its slot until :meth:`gateway.exchange.Exchange.start_try` starts the try."""
        group = ticket.group
        picked = select_endpoint(
            self.fleet,
            self.policy_for(group),
            group,
            ticket.tried,
            self.config.limits.max_requests_per_backend,
            now,
            self.rng,
            ticket.request,
        )
        if isinstance(picked, Endpoint):
            picked.reserved += 1
        return picked

    def _on_transition(self, transition: Transition) -> None:
        """Every health state change: metrics, logs, cached views, and a fresh start on an
        ejection and on recovery."""
        self.fleet.invalidate()
        name = transition.endpoint
        to = transition.to_state
        self.metrics.circuit_transitions.labels(name, to.value, transition.reason).inc()
        if to is CircuitState.OPEN:
            self.metrics.ejections.labels(name, transition.reason).inc()
        log.log(
            transition.log_level,
            "backend %s: %s -> %s (%s)",
            name,
            transition.from_state.value,
            to.value,
            transition.reason,
        )
        # An ejection forgets the latency learnt before it (failure penalties compounded up to
        # the per-try timeout): when its time is up the backend returns at the fleet's prior,
        # so the policy sends it the trial that closes its circuit instead of starving it.
        back_from_probes = transition.from_state is CheckState.UNHEALTHY
        if transition.recovered or back_from_probes or to is CircuitState.OPEN:
            endpoint = self.fleet.endpoints.get(name)
            if endpoint is not None:
                endpoint.signals.reset_for_recovery(self.clock())
