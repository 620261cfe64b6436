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

# 1 ms .. 1 s per output token: a fast decode step is a few ms, an overloaded one hundreds.
TOKEN_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04,
    0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0,
)  # fmt: skip

# Model names come from clients and backends; past this many, new ones share one label so a
# client cannot grow the metrics page without bound.
MAX_MODEL_LABELS = 64
OTHER_MODEL = "other"

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


class ModelLabels:
    """The ``model`` label's value: the model's name for the first ``limit`` names seen, then
    ``other`` (an unknown model is ``-``)."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int = MAX_MODEL_LABELS) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, model: str | None) -> str:
        if not model:
            return "-"
        if model in self._seen:
            return model
        if len(self._seen) >= self._limit:
            return OTHER_MODEL
        self._seen.add(model)
        return model


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
            "One upstream try: time to the first event for streams, the whole exchange otherwise.",
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
        self.model_undecided = Counter(
            "tailgate_route_model_undecided",
            "Requests routed without a model because the body's top-level model could not be "
            "read, by reason: not_json (or not an object), too_deep.",
            ["reason"],
            registry=r,
        )
        self.client_body_failures = Counter(
            "tailgate_client_body_failures",
            "Requests whose body the client broke off or stopped sending (never counted "
            "against a backend), by kind: client-body, client-body-timeout.",
            ["kind"],
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
        self.tenant_requests = Counter(
            "tailgate_tenant_requests",
            "Requests answered after admission, by tenant and priority class.",
            ["tenant", "priority"],
            registry=r,
        )
        self.tenant_tokens = Counter(
            "tailgate_tenant_tokens",
            "Tokens (prompt + completion) used per tenant: the response's usage, else the "
            "admission estimate.",
            ["tenant"],
            registry=r,
        )
        self.tenant_refused = Counter(
            "tailgate_tenant_refused_requests",
            "Requests refused by tenant admission: unauthorized (401), "
            "tokens_per_minute / requests_per_minute (429).",
            ["tenant", "reason"],
            registry=r,
        )
        self.tenant_limit = Gauge(
            "tailgate_tenant_rate_limit",
            "Each configured tenant's limit per minute (0 = none), by kind: tokens or requests.",
            ["tenant", "kind"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.tenant_limit_left = Gauge(
            "tailgate_tenant_rate_limit_left",
            "What this replica's bucket holds for each limited tenant, by kind.",
            ["tenant", "kind"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.shed_by_priority = Counter(
            "tailgate_shed_by_priority",
            "Requests refused for capacity (queue full, displaced, timed out), by class.",
            ["priority", "reason"],
            registry=r,
        )
        self.config_reloads = Counter(
            "tailgate_config_reloads",
            "Config reloads, by result (success or failure).",
            ["result"],
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "tailgate_time_to_first_token_seconds",
            "From the request's arrival to the first content event of a streamed answer, or to "
            "the end of the whole answer when it is not streamed (retries and queueing included).",
            ["backend", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "tailgate_time_per_output_token_seconds",
            "Streamed answers: (last content event - first) / (completion tokens - 1).",
            ["backend", "model"],
            buckets=TOKEN_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "tailgate_tokens",
            "Tokens of OpenAI-style answers, by kind (prompt or completion) and source: usage "
            "(the backend's usage object) or events (counted content events of a stream).",
            ["backend", "model", "kind", "source"],
            registry=r,
        )
        self.slo_requests = Counter(
            "tailgate_slo_requests",
            "Answers that met (result=met) or missed the slo: section's TTFT and TPOT targets; "
            "goodput is the share that met them.",
            ["backend", "model", "result"],
            registry=r,
        )
        self.unparsed_answers = Counter(
            "tailgate_unparsed_answers",
            "Answers relayed unchanged but not understood: malformed or over the parsing bound.",
            ["backend", "reason"],
            registry=r,
        )
        self.model_label = ModelLabels()
        self.cache_requests = Counter(
            "tailgate_cache_requests",
            "Requests on routes with the cache on, by result: hit, miss or bypass.",
            ["route", "result"],
            registry=r,
        )
        self.cache_coalesced = Counter(
            "tailgate_cache_coalesced",
            "Hits served by waiting for an identical request already upstream.",
            ["route"],
            registry=r,
        )
        self.cache_evictions = Counter(
            "tailgate_cache_evictions",
            "Entries dropped from the in-process cache, by reason: size or expired.",
            ["reason"],
            registry=r,
        )
        self.cache_bytes = Gauge(
            "tailgate_cache_bytes",
            "Bytes held by the in-process cache (answers and per-entry overhead).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_entries = Gauge(
            "tailgate_cache_entries",
            "Answers held by the in-process cache.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_shared_store_errors = Counter(
            "tailgate_cache_shared_store_errors",
            "Shared-store (Redis) calls that failed or timed out, by operation; served uncached.",
            ["operation"],
            registry=r,
        )
        # The request path's families, children cached (see Children).
        self.requests_for = Children(self.requests)
        self.request_duration_for = Children(self.request_duration)
        self.upstream_latency_for = Children(self.upstream_latency)
        self.time_to_first_byte_for = Children(self.time_to_first_byte)
        self.upstream_failures_for = Children(self.upstream_failures)
        self.time_to_first_token_for = Children(self.time_to_first_token)
        self.time_per_output_token_for = Children(self.time_per_output_token)
        self.tokens_for = Children(self.tokens)
        self.slo_requests_for = Children(self.slo_requests)
        self.unparsed_answers_for = Children(self.unparsed_answers)
        self.cache_requests_for = Children(self.cache_requests)
        self.cache_coalesced_for = Children(self.cache_coalesced)
        self.tenant_requests_for = Children(self.tenant_requests)
        self.tenant_tokens_for = Children(self.tenant_tokens)
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
