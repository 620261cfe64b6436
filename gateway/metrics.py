"""Every Prometheus family the gateway exports, defined in one place.

Counters and histograms are updated on the request path; per-backend gauges (in-flight,
reported queue depth, score, circuit state) are published by a background task once a second,
so the hot path does no label lookups for them and multi-worker mode (prometheus-client's
multiprocess mode) aggregates them like everything else.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

F = TypeVar("F", Counter, Histogram)

# 5 ms .. 60 s: inference answers range from a cached token to a long generation.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip

CIRCUIT_STATE_VALUE = {"closed": 0, "open": 1, "half_open": 2}


class Children(Generic[F]):
    """A family's labelled children, cached by their label values.

    prometheus-client's ``labels()`` validates the values and takes a lock on every call
    (0.9-1.8 µs, measured), which showed in the request path's profile; a dict lookup does not.
    Only for counters and histograms: their children are never removed (per-backend gauges
    are, when a backend leaves, and are published off the request path anyway).
    """

    __slots__ = ("_cache", "_family")

    def __init__(self, family: F) -> None:
        self._family: F = family
        self._cache: dict[tuple[str, ...], F] = {}

    def __call__(self, *values: str) -> F:
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = self._family.labels(*values)
        return child


class GatewayMetrics:
    """The gateway's metric families, registered on one registry (no module-level globals)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tailgate_requests",
            "Requests answered, by route, backend ('-' when none served it) and status code.",
            ["route", "backend", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "tailgate_request_duration_seconds",
            "Client-visible time from request to the end of the response, retries included.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "inference_latency_seconds",
            "One upstream try: time to first byte for streams, whole exchange otherwise.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_byte = Histogram(
            "tailgate_upstream_time_to_first_byte_seconds",
            "Time from sending a try upstream to its response headers.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_failures = Counter(
            "tailgate_upstream_failures",
            "Tries that failed without a response: connect-failure, reset, timeout.",
            ["backend", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "tailgate_upstream_in_flight",
            "Requests this gateway has in flight at each backend.",
            ["backend"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_depth = Gauge(
            "tailgate_upstream_queue_depth",
            "Queue depth used for balancing (exact in-flight combined with the reported depth).",
            ["backend"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.reported_queue_depth = Gauge(
            "tailgate_upstream_reported_queue_depth",
            "Last queue depth the backend reported (header or /metrics scrape).",
            ["backend"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.latency_estimate = Gauge(
            "tailgate_upstream_latency_estimate_seconds",
            "The decaying latency average the balancer uses for each backend.",
            ["backend"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.score = Gauge(
            "tailgate_upstream_score",
            "Each backend's current balancing score (lower is preferred).",
            ["backend"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.routable = Gauge(
            "tailgate_upstream_routable",
            "1 when a backend may receive new requests, else 0.",
            ["backend"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.circuit_state = Gauge(
            "tailgate_upstream_circuit_state",
            "Circuit state per backend: 0 closed, 1 open (ejected), 2 half-open.",
            ["backend"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.circuit_transitions = Counter(
            "tailgate_circuit_transitions",
            "Circuit state changes per backend, by new state and reason.",
            ["backend", "to", "reason"],
            registry=r,
        )
        self.ejections = Counter(
            "tailgate_ejections",
            "Backends ejected (circuit opened), by reason.",
            ["backend", "reason"],
            registry=r,
        )
        self.health_checks = Counter(
            "tailgate_health_checks",
            "Active health check results per backend.",
            ["backend", "result"],
            registry=r,
        )
        self.retries = Counter(
            "tailgate_retries",
            "Retries sent to another backend, by the failure that caused them.",
            ["route", "reason"],
            registry=r,
        )
        self.retry_budget_exhausted = Counter(
            "tailgate_retry_budget_exhausted",
            "Retries not sent because the retry budget was spent.",
            ["route"],
            registry=r,
        )
        self.hedges = Counter(
            "tailgate_hedges",
            "Hedged tries: sent, won (answered first), and tries cancelled because the other "
            "answered first.",
            ["route", "event"],
            registry=r,
        )
        self.broken_streams = Counter(
            "tailgate_broken_streams",
            "Responses whose upstream broke off after the first byte, by what became of them: "
            "resumed on another backend, or ended with an error event.",
            ["route", "result"],
            registry=r,
        )
        self.shed = Counter(
            "tailgate_shed_requests",
            "Requests answered 503 by the gateway without trying a backend, by reason.",
            ["route", "reason"],
            registry=r,
        )
        self.pending = Gauge(
            "tailgate_pending_requests",
            "Requests waiting in the gateway for a backend with spare capacity.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.config_reloads = Counter(
            "tailgate_config_reloads",
            "Config reloads, by result (success or failure).",
            ["result"],
            registry=r,
        )
        # The request path's families, children cached (see Children).
        self.requests_for = Children(self.requests)
        self.request_duration_for = Children(self.request_duration)
        self.upstream_latency_for = Children(self.upstream_latency)
        self.time_to_first_byte_for = Children(self.time_to_first_byte)
        self.upstream_failures_for = Children(self.upstream_failures)
        self.per_backend_gauges = (
            self.in_flight,
            self.queue_depth,
            self.reported_queue_depth,
            self.latency_estimate,
            self.score,
            self.routable,
            self.circuit_state,
        )
        self.backends = Gauge(
            "tailgate_backends",
            "Configured or discovered backends.",
            registry=r,
            multiprocess_mode="livemax",
        )
