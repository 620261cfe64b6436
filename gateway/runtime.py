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
from gateway.balancer.settings import BalancerSettings
from gateway.cache import ResponseCache
from gateway.capacity import Capacity, NoPick, Ticket
from gateway.config.model import GatewayConfig
from gateway.endpoint import Endpoint
from gateway.exchange import SafePaths
from gateway.fleet import BackendSpec, Fleet
from gateway.health.active import ActiveCheckState
from gateway.health.circuit import EndpointHealth
from gateway.health.outcome import Outcome
from gateway.health.outlier import OutlierDetector
from gateway.health.settings import ActiveCheckSettings, BreakerSettings, OutlierSettings
from gateway.health.transition import CheckState, CircuitState, Transition
from gateway.hedging import HedgeSettings, Hedging
from gateway.load.signals import EndpointSignals, SignalSettings
from gateway.metrics import GatewayMetrics
from gateway.pending_queue import FairQueue, FairShare
from gateway.request_info import RequestInfo
from gateway.retry_budget import RetryBudget, RetryBudgetSettings
from gateway.routing import Router
from gateway.selection import select_endpoint
from gateway.tenants import TenantGate
from gateway.tracing import Tracer, build_tracer
from gateway.upstream import UpstreamClient

log = logging.getLogger("tailgate")


def signal_settings(config: GatewayConfig) -> SignalSettings:
    b = config.balancer
    return SignalSettings(
        decay_s=b.latency.decay,
        peak_sensitive=b.latency.peak_sensitive,
        idle_decay_s=b.latency.idle_decay,
        report_fresh_s=b.queue_depth.fresh,
        report_stale_s=b.queue_depth.stale,
        slow_start_s=b.slow_start,
        slow_start_min_weight=b.slow_start_min_weight,
        failure_cap_s=config.timeouts.per_try,
    )


def balancer_settings(config: GatewayConfig) -> BalancerSettings:
    b = config.balancer
    return BalancerSettings(
        policy=b.policy,
        alpha=b.alpha,
        beta=b.beta,
        selection=b.selection,
        default_latency_s=b.default_latency,
        prefix_capacity_blocks=b.prefix.capacity_blocks,
        load_bound=b.prefix.load_bound,
        prefix_queue_weight=b.prefix.queue_weight,
        session_affinity=b.prefix.session_affinity,
    )


def hedge_settings(config: GatewayConfig) -> HedgeSettings:
    h = config.hedging
    return HedgeSettings(
        enabled=h.enabled,
        delay_s=h.delay,
        quantile=h.quantile,
        min_delay_s=h.min_delay,
        max_delay_s=h.max_delay,
        budget_percent=h.budget_percent,
    )


def outlier_settings(config: GatewayConfig) -> OutlierSettings:
    od = config.outlier_detection
    return OutlierSettings(
        consecutive_5xx=od.consecutive_5xx if od.enabled else 0,
        consecutive_gateway_failure=od.consecutive_gateway_failure if od.enabled else 0,
        interval_s=od.interval,
        base_ejection_time_s=config.open_duration_s,
        max_ejection_time_s=od.max_ejection_time,
        max_ejection_percent=od.max_ejection_percent,
        success_rate_enabled=od.enabled,
        success_rate_minimum_hosts=od.success_rate_minimum_hosts,
        success_rate_request_volume=od.success_rate_request_volume,
        success_rate_stdev_factor=od.success_rate_stdev_factor,
        panic_threshold_percent=od.panic_threshold,
    )


def breaker_settings(config: GatewayConfig) -> BreakerSettings:
    cb = config.circuit_breaker
    return BreakerSettings(
        failure_threshold=cb.failure_threshold if cb.enabled else 0,
        half_open_requests=cb.half_open_requests,
    )


def active_settings(config: GatewayConfig) -> ActiveCheckSettings | None:
    hc = config.health_check
    if not hc.enabled:
        return None
    return ActiveCheckSettings(
        path=hc.path,
        interval_s=hc.interval,
        timeout_s=hc.timeout,
        unhealthy_threshold=hc.unhealthy_threshold,
        healthy_threshold=hc.healthy_threshold,
        jitter_percent=hc.jitter_percent,
    )


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

    retry_budget: RetryBudget
    hedging: Hedging
    capacity: Capacity[Endpoint]
    cache: ResponseCache

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
        self.config = config
        self.signal_settings = signal_settings(config)
        self.outlier_settings = outlier_settings(config)
        self.breaker_settings = breaker_settings(config)
        self.active_settings = active_settings(config)
        self.balancer_settings = balancer_settings(config)
        self.policies: dict[str, Policy] = {}  # one per group: each caches its fleet reference
        self.wants_blocks = config.balancer.policy in READS_PROMPT_BLOCKS
        self.detector = OutlierDetector(self.outlier_settings)
        self.router = Router(config.routes)
        self.safe_paths = SafePaths(config.retries.safe_paths)
        budget = RetryBudgetSettings(
            budget_percent=config.retries.budget_percent,
            min_retries_per_s=config.retries.min_retries_per_second,
        )
        if getattr(self, "retry_budget", None) is None or self.retry_budget.settings != budget:
            self.retry_budget = RetryBudget(budget)
        hedge = hedge_settings(config)
        if getattr(self, "hedging", None) is None or self.hedging.settings != hedge:
            self.hedging = Hedging(hedge)
        if getattr(self, "capacity", None) is None:
            self.capacity = Capacity(
                config.limits, self._pick, lambda limit: FairQueue(limit, self.fair_share)
            )
        else:  # keep the requests already queued
            self.capacity.settings = config.limits
        if getattr(self, "cache", None) is None:
            self.cache = ResponseCache(config.cache, self.metrics, self.clock)
        else:  # keep the answers that still fit
            self.cache.apply(config.cache)
        self.tenant_gate.install(config)  # buckets and the keys file survive a reload
        self.fair_share.weights.clear()  # in place: the queues hold this dict
        self.fair_share.weights.update(self.tenant_gate.directory.weights)
        self.fair_share.sheddable_limit = config.admission.sheddable_max_pending
        self.fleet.panic_threshold_percent = config.outlier_detection.panic_threshold
        if getattr(self, "tracing_settings", None) != config.tracing:
            self._swap_tracer(build_tracer(config.tracing, self.rng))
        self.tracing_settings = config.tracing

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

        Settings objects of existing endpoints are replaced in place so new thresholds apply
        at once, without losing counters.
        """
        self._install(config)
        for endpoint in self.fleet.endpoints.values():
            endpoint.signals.settings = self.signal_settings
            endpoint.health.outlier = self.outlier_settings
            endpoint.health.breaker = self.breaker_settings
            if self.active_settings is None:
                endpoint.health.active = None
            elif endpoint.health.active is None:
                endpoint.health.active = ActiveCheckState(
                    self.active_settings, name=endpoint.name, listener=self._on_transition
                )
            else:
                endpoint.health.active.settings = self.active_settings
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
            policy = self.policies[group] = build_policy(self.balancer_settings)
            policy.refresh(self.fleet.groups.get(group, []), self.clock())
        return policy

    def prior_latency_s(self, group: str) -> float:
        """The latency an unmeasured backend of ``group`` is assumed to have: the fleet median
        its policy keeps, or the configured default for policies that keep none."""
        reference = getattr(self.policy_for(group), "fleet", None)
        return (
            reference.latency_s
            if reference is not None
            else self.balancer_settings.default_latency_s
        )

    def refresh_policies(self) -> None:
        """Recompute each group's fleet reference (medians); called periodically."""
        now = self.clock()
        for group in self.fleet.groups:
            candidates, _ = self.fleet.candidates(group, now)  # ejected ones would skew medians
            self.policy_for(group).refresh(candidates, now)

    def _make_endpoint(self, spec: BackendSpec, now: float) -> Endpoint:
        health = EndpointHealth(
            self.outlier_settings,
            self.breaker_settings,
            self.active_settings,
            name=spec.name,
            listener=self._on_transition,
        )
        signals = EndpointSignals(self.signal_settings, now)
        public = spec.name if spec.configured_name else opaque_label(spec.url)
        return Endpoint(spec.name, spec.url, spec.weight, spec.group, signals, health, public)

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
        """Every health state change: metrics, logs, cached views, and a fresh start on recovery."""
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
        back_from_probes = transition.from_state is CheckState.UNHEALTHY
        if transition.recovered or back_from_probes:
            endpoint = self.fleet.endpoints.get(name)
            if endpoint is not None:
                endpoint.signals.reset_for_recovery(self.clock())
