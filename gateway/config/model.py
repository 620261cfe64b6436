"""The gateway's configuration as frozen dataclasses: one class per YAML section.

Names follow ARCHITECTURE.md and, where one exists, Envoy's name for the same setting
(``consecutive_5xx``, ``base_ejection_time``, ``per_try_timeout`` ...). Durations are stored
in seconds (``*_s`` in code, ``10s`` in YAML); sizes in bytes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

from gateway.config.schema import field, in_range, non_negative, positive
from gateway.config.units import parse_duration, parse_size
from gateway.failures import RETRY_CONDITIONS
from gateway.health.ejection import open_duration_s
from gateway.load_reports import PROFILES

Selection = Literal["best", "p2c"]


def _duration(
    default: float, check: Callable[[float], str | None] | None = None, doc: str = ""
) -> Any:
    return field(default, parse=parse_duration, check=check, doc=doc)


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a port number, got {value!r}")
    if not 0 <= value <= 65535:
        raise ValueError(f"port {value} is out of range 0-65535")
    return value


def parse_backend_url(value: object) -> str:
    """An upstream base URL: http(s)://host:port with no query, fragment or credentials."""
    if not isinstance(value, str):
        raise ValueError(f"expected a URL string, got {type(value).__name__}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"URL {value!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"URL {value!r} has no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"URL {value!r} has a bad port: {exc}") from None
    if port == 0:
        raise ValueError(f"URL {value!r} has port 0")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"URL {value!r} must not carry a query, fragment or credentials")
    return value.rstrip("/")


@dataclasses.dataclass(frozen=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = field(8080, parse=_port)
    backlog: int = field(1024, check=positive)


@dataclasses.dataclass(frozen=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = field(9901, parse=_port)
    token: str | None = field(
        None, doc="when set, admin requests need 'Authorization: Bearer <token>'"
    )
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise ValueError("admin.token must not be empty (leave it out to disable admin auth)")


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    url: str = field(parse=parse_backend_url)
    name: str | None = None
    weight: float = field(1.0, check=positive)
    group: str = "default"
    api_key: str | None = field(
        None, doc="sent upstream as 'Authorization: Bearer <api_key>' in place of the client's"
    )

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def _discovery_type(value: object) -> str:
    """``static`` or a source registered in ``gateway.discovery.SOURCES`` (imported here, at
    parse time, because the sources themselves import this module)."""
    from gateway.discovery import SOURCES

    names = ("static", *SOURCES)
    if value not in names:
        raise ValueError(f"must be one of {', '.join(names)}; got {value!r}")
    return str(value)


@dataclasses.dataclass(frozen=True)
class DiscoveryConfig:
    """Where the backend set comes from when it is not a static ``backends:`` list."""

    type: str = field("static", parse=_discovery_type)
    path: str | None = field(None, doc="file discovery: a YAML/JSON list of backends, watched")
    name: str | None = field(None, doc="dns discovery: the name whose A/AAAA records are backends")
    port: int = field(8000, parse=_port)
    scheme: Literal["http", "https"] = "http"
    group: str = "default"
    refresh: float = _duration(5.0, positive)
    resolver: str | None = field(None, doc="dns discovery: host[:port] of the resolver to ask")

    def __post_init__(self) -> None:
        if self.type == "file" and not self.path:
            raise ValueError("discovery.path is required when discovery.type is file")
        if self.type == "dns" and not self.name:
            raise ValueError("discovery.name is required when discovery.type is dns")


@dataclasses.dataclass(frozen=True)
class LatencyConfig:
    decay: float = _duration(10.0, positive, "time constant of the decaying latency average")
    peak_sensitive: bool = True
    idle_decay: float = _duration(30.0, positive, "an idle backend's estimate fades to the median")


@dataclasses.dataclass(frozen=True)
class QueueDepthConfig:
    header: str = "X-Queue-Depth"
    fresh: float = _duration(2.0, non_negative)
    stale: float = _duration(10.0, positive)
    scrape_interval: float = _duration(1.0, non_negative, "0 turns /metrics scraping off")
    scrape_path: str = "/metrics"
    scrape_timeout: float = _duration(1.0, positive)
    profiles: tuple[str, ...] = field(
        ("vllm", "sglang", "tgi", "triton", "tailgate"),
        doc="load-report profiles whose waiting/running/KV metrics a scrape reads",
    )
    metrics: tuple[str, ...] = field((), doc="extra metric names summed into the queue depth")

    def __post_init__(self) -> None:
        unknown = [name for name in self.profiles if name not in PROFILES]
        if unknown:
            raise ValueError(
                f"balancer.queue_depth.profiles: unknown {unknown}, known: {sorted(PROFILES)}"
            )


@dataclasses.dataclass(frozen=True)
class PrefixConfig:
    """prefix_aware's affinity settings (see the README's "The prefix-aware score")."""

    capacity_blocks: int = field(
        4096,
        check=positive,
        doc="prompt blocks (~64 tokens each) remembered per backend that reports no KV size",
    )
    max_blocks: int = field(
        1 << 20,
        check=positive,
        doc="prompt blocks remembered over all backends (~400 bytes each): each backend's "
        "bound is at most this / backends",
    )
    load_bound: float = field(
        1.0,
        check=non_negative,
        doc="affinity never sends to a backend above (1 + this) x mean load",
    )
    queue_weight: float = field(
        0.1,
        check=non_negative,
        doc="share of beta the request-count queue term keeps for a request with a prompt",
    )
    session_header: str | None = field(None, doc="request header whose value is the session key")
    session_affinity: bool = field(False, doc="the same session key prefers the same backend")


def _policy_name(value: object) -> str:
    """A policy registered in ``gateway.balancer.POLICIES`` (one module + one entry each)."""
    from gateway.balancer import POLICIES

    if value not in POLICIES:
        raise ValueError(f"must be one of {', '.join(POLICIES)}; got {value!r}")
    return str(value)


@dataclasses.dataclass(frozen=True)
class BalancerConfig:
    """The ``balancer:`` section: each policy is built from it (``gateway.balancer.POLICIES``)
    and every backend's signals decay by it (``latency``, ``queue_depth``, ``slow_start``).

    ``alpha`` and ``beta`` weigh the latency and queue terms of ``weighted_score`` and
    ``prefix_aware``; ``selection`` is ``weighted_score``'s only (``least_request`` and
    ``peak_ewma`` always use power of two choices); ``default_latency`` is the prior until
    any backend of the group has been measured; ``prefix`` is ``prefix_aware``'s.
    """

    policy: str = field("prefix_aware", parse=_policy_name)
    alpha: float = field(0.6, check=non_negative)
    beta: float = field(0.4, check=non_negative)
    selection: Selection = "p2c"
    default_latency: float = _duration(0.1, positive)
    slow_start: float = _duration(0.0, non_negative)
    slow_start_min_weight: float = field(0.1, check=in_range(0.01, 1.0))
    latency: LatencyConfig = dataclasses.field(default_factory=LatencyConfig)
    queue_depth: QueueDepthConfig = dataclasses.field(default_factory=QueueDepthConfig)
    prefix: PrefixConfig = dataclasses.field(default_factory=PrefixConfig)

    def __post_init__(self) -> None:
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("balancer.alpha and balancer.beta must not both be 0")


@dataclasses.dataclass(frozen=True)
class TimeoutsConfig:
    connect: float = _duration(1.0, positive)
    per_try: float = _duration(
        30.0,
        positive,
        "a try's response head, and an event stream's first token after it, within this",
    )
    total: float = _duration(60.0, positive)
    stream_idle: float = _duration(
        10.0,
        positive,
        "longest silence of an upstream body once it began; past it the backend is taken for "
        "hung and the response broken (an event stream resumes on another backend)",
    )
    request_header: float = _duration(10.0, positive, "a client must send its headers within this")
    request_body_idle: float = _duration(
        5.0, positive, "longest pause between two pieces of a request body before a 408"
    )
    request_body: float = _duration(
        30.0, positive, "a client must send its whole request body within this of its arrival"
    )
    idle: float = _duration(75.0, positive, "keep-alive time of an idle client connection")
    upstream_idle: float = _duration(
        4.0,
        positive,
        "keep-alive time of a pooled upstream connection; keep it below the backends' own "
        "(uvicorn, so vLLM, closes idle connections after 5 s)",
    )


@dataclasses.dataclass(frozen=True)
class LimitsConfig:
    max_body: int = field(16 * 1024**2, parse=parse_size)
    max_header_size: int = field(16 * 1024, parse=parse_size)
    max_requests_per_backend: int = field(256, check=positive)
    max_pending: int = field(1024, check=non_negative)
    queue_timeout: float = _duration(1.0, non_negative)
    max_connections_per_backend: int = field(256, check=positive)


PriorityName = Literal["critical", "standard", "sheddable"]


def _sha256_hashes(value: object) -> tuple[str, ...]:
    """API keys as the hex SHA-256 of the key (``printf %s KEY | sha256sum``): never the key."""
    if not isinstance(value, list):
        raise ValueError("expected a list of hex SHA-256 hashes")
    out = []
    for item in value:
        text = str(item).strip().lower()
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            raise ValueError(f"{item!r} is not a hex SHA-256 hash (64 hex digits)")
        out.append(text)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class RateLimitConfig:
    """Per-tenant rates, each a token bucket that holds one minute's worth (0 = no limit)."""

    tokens_per_minute: int = field(0, check=non_negative, doc="prompt + completion tokens")
    requests_per_minute: int = field(0, check=non_negative)


@dataclasses.dataclass(frozen=True)
class TenantConfig:
    name: str = field()
    api_keys: tuple[str, ...] = field((), parse=_sha256_hashes, doc="hex SHA-256 of each key")
    priority: PriorityName = "standard"  # when the request has no priority header
    weight: float = field(1.0, check=positive, doc="share of capacity against other tenants")
    limits: RateLimitConfig | None = None  # None: admission.default_limits


@dataclasses.dataclass(frozen=True)
class ApiKeysConfig:
    enabled: bool = field(False, doc="tenants by 'Authorization: Bearer'; an unknown key -> 401")
    file: str | None = field(None, doc="YAML {tenant: [sha256, ...]}, reloaded when it changes")
    reload_interval: float = _duration(2.0, positive)
    forward_client_key: bool = field(False, doc="pass the client's key on to backends")


@dataclasses.dataclass(frozen=True)
class SharedLimitsConfig:
    redis_url: str | None = field(None, doc="one limit across replicas; unset = per replica")
    timeout: float = _duration(0.05, positive, "a slower Redis falls back to per-replica limits")
    retry_after: float = _duration(5.0, positive, "how long to stay on per-replica after a failure")
    key_prefix: str = "tailgate:limits:"


@dataclasses.dataclass(frozen=True)
class AdmissionConfig:
    """Tenants, priority classes, fair queueing and rate limits (README: Admission and tenants)."""

    tenant_header: str = "X-Tenant"
    priority_header: str = "X-Priority"
    api_keys: ApiKeysConfig = dataclasses.field(default_factory=ApiKeysConfig)
    tenants: tuple[TenantConfig, ...] = ()
    default_limits: RateLimitConfig = dataclasses.field(default_factory=RateLimitConfig)
    sheddable_max_pending: int = field(
        0, check=non_negative, doc="sheddable requests may wait only while fewer are pending"
    )
    sheddable_queue_depth: float = field(
        0.0, check=non_negative, doc="> 0: shed sheddable when every backend reports more queued"
    )
    sheddable_kv_usage: float = field(
        0.95,
        check=in_range(0, 1),
        doc="shed sheddable when every backend reports its KV cache this full (0 = off)",
    )
    shared_limits: SharedLimitsConfig = dataclasses.field(default_factory=SharedLimitsConfig)


@dataclasses.dataclass(frozen=True)
class OutlierDetectionConfig:
    enabled: bool = True
    consecutive_5xx: int = field(5, check=positive)
    consecutive_gateway_failure: int = field(5, check=positive)
    interval: float = _duration(10.0, positive)
    base_ejection_time: float | None = field(
        None, parse=parse_duration, doc="default 30s; one open duration shared with the breaker"
    )
    max_ejection_time: float = _duration(300.0, positive)
    max_ejection_percent: float = field(50.0, check=in_range(0, 100))
    success_rate_minimum_hosts: int = field(5, check=positive)
    success_rate_request_volume: int = field(100, check=positive)
    success_rate_stdev_factor: float = field(1.9, check=positive)
    failure_percentage_threshold: float | None = field(
        None,
        check=lambda v: None if v is None else in_range(0, 100)(v),
        doc="eject at each sweep a backend with at least this percent of failures this "
        "interval (off when unset, as in Envoy)",
    )
    failure_percentage_minimum_hosts: int = field(5, check=positive)
    failure_percentage_request_volume: int = field(50, check=positive)
    panic_threshold: float = field(50.0, check=in_range(0, 100))


@dataclasses.dataclass(frozen=True)
class CircuitBreakerConfig:
    enabled: bool = True
    failure_threshold: int = field(5, check=positive)
    recovery_time: float | None = field(
        None,
        parse=parse_duration,
        doc="the breaker's name for outlier_detection.base_ejection_time",
    )
    half_open_requests: int = field(1, check=positive)


def _absolute_path(value: str) -> str | None:
    return None if value.startswith("/") else "must start with '/'"


@dataclasses.dataclass(frozen=True)
class HealthCheckConfig:
    """Active checks (``gateway.checks``): a GET of ``path`` each round, plus a one-token
    generation every ``generation_interval`` when that is set."""

    enabled: bool = True
    path: str = field("/ready", check=_absolute_path)
    interval: float = _duration(5.0, positive)
    jitter_percent: float = field(10.0, check=in_range(0, 99))
    timeout: float = _duration(1.0, positive)
    unhealthy_threshold: int = field(3, check=positive)
    healthy_threshold: int = field(2, check=positive)
    generation_interval: float | None = field(
        None,
        parse=parse_duration,
        doc="also send a one-token completion this often (off when unset): vLLM's /health "
        "answers 200 while its engine is wedged; a failed generation fails every check until "
        "the next one passes",
    )
    generation_path: str = field("/v1/completions", check=_absolute_path)
    generation_model: str | None = field(None, doc="the model field of the one-token request")
    generation_timeout: float = _duration(10.0, positive)


def _retry_on(value: object) -> tuple[str | int, ...]:
    if not isinstance(value, list):
        raise ValueError("expected a list like [connect-failure, reset, 502, 503, 504]")
    out: list[str | int] = []
    for item in value:
        is_status = isinstance(item, int) and not isinstance(item, bool) and 500 <= item <= 599
        if is_status or (isinstance(item, str) and item in RETRY_CONDITIONS):
            out.append(item)
        else:
            known = ", ".join(sorted(RETRY_CONDITIONS))
            raise ValueError(f"unknown retry condition {item!r} (use {known} or a 5xx status)")
    return tuple(out)


INFERENCE_PATHS = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/rerank",
    "/v1/score",
    "/generate",
    "/generate_stream",
    "/v2/models/*/infer",
    "/v2/models/*/versions/*/infer",
    "/v2/models/*/generate",
    "/v2/models/*/generate_stream",
)


def _path_patterns(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of paths like [/v1/completions, /v2/models/*/infer]")
    for pattern in value:
        if not pattern.startswith("/"):
            raise ValueError(f"path {pattern!r} must start with '/'")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class RetriesConfig:
    attempts: int = field(2, check=in_range(1, 10))
    retry_on: tuple[str | int, ...] = field(
        ("connect-failure", "reset", "timeout", 500, 502, 503, 504), parse=_retry_on
    )
    budget_percent: float = field(20.0, check=in_range(0, 100))
    min_retries_per_second: float = field(3.0, check=non_negative)
    backoff_base: float = _duration(0.025, non_negative)
    backoff_max: float = _duration(0.25, non_negative)
    buffer_limit: int = field(1024 * 1024, parse=parse_size)
    safe_paths: tuple[str, ...] = field(
        INFERENCE_PATHS,
        parse=_path_patterns,
        doc="POST paths safe to resend to another backend (inference changes nothing); "
        "'*' matches one path segment",
    )
    retry_non_idempotent: bool = field(
        False, doc="resend every non-idempotent request, not only those to safe_paths"
    )


@dataclasses.dataclass(frozen=True)
class HedgingConfig:
    """Hedged requests (``gateway.hedging``): for idempotent and inference requests."""

    enabled: bool = True
    delay: float | None = field(
        None,
        parse=parse_duration,
        doc="fixed hedge delay; unset: the group's recent p99 time to head (streams: to the "
        "first token), within min_delay..max_delay",
    )
    quantile: float = field(
        0.99, check=in_range(0.5, 1), doc="which latency quantile the learned delay is"
    )
    min_delay: float = _duration(0.005, non_negative)
    max_delay: float = _duration(2.0, positive)
    budget_percent: float = field(5.0, check=in_range(0, 100))


@dataclasses.dataclass(frozen=True)
class RouteMatch:
    path_prefix: str = "/"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    model: str | None = None


@dataclasses.dataclass(frozen=True)
class RouteGroup:
    name: str = field()
    weight: float = field(1.0, check=non_negative)


@dataclasses.dataclass(frozen=True)
class RouteConfig:
    match: RouteMatch = dataclasses.field(default_factory=RouteMatch)
    groups: tuple[RouteGroup, ...] = ()
    name: str | None = None
    retry_non_idempotent: bool | None = None
    cache: bool | None = field(None, doc="per-route override of cache.enabled")

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("a route needs at least one group")
        if sum(g.weight for g in self.groups) <= 0:
            raise ValueError("a route's group weights must not all be 0")


def _networks(value: object) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    if not isinstance(value, list):
        raise ValueError("expected a list of networks like [10.0.0.0/8, 192.168.1.7/32]")
    try:
        return tuple(ipaddress.ip_network(str(item), strict=False) for item in value)
    except ValueError as exc:
        raise ValueError(f"not a network: {exc}") from None


@dataclasses.dataclass(frozen=True)
class CacheRedisConfig:
    """The optional shared store: replicas of the gateway share their cache through Redis."""

    url: str | None = field(None, doc="redis://host:port/db; null keeps the cache per process")
    timeout: float = _duration(
        0.05, positive, "a Redis call slower than this is given up: the request goes uncached"
    )
    cooldown: float = _duration(
        1.0, non_negative, "after a failed Redis call, skip Redis this long (no per-request wait)"
    )
    key_prefix: str = "tailgate:cache:"


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    """Answers to deterministic requests (temperature 0 or top_k 1, n 1), kept and replayed."""

    enabled: bool = field(False, doc="routes may override it with routes[].cache")
    max_bytes: int = field(64 * 1024**2, parse=parse_size, check=positive)
    max_entries: int = field(10_000, check=positive)
    max_entry_bytes: int = field(
        1024**2, parse=parse_size, check=positive, doc="a larger answer is relayed, not kept"
    )
    ttl: float = _duration(300.0, positive, "how long an answer is served from the cache")
    shared: bool = field(False, doc="true lets tenants share entries; false keys them by tenant")
    coalesce: bool = field(
        True, doc="identical concurrent requests wait for the first one's answer"
    )
    redis: CacheRedisConfig = dataclasses.field(default_factory=CacheRedisConfig)

    def __post_init__(self) -> None:
        if self.max_entry_bytes > self.max_bytes:
            raise ValueError("cache.max_entry_bytes must not exceed cache.max_bytes")


@dataclasses.dataclass(frozen=True)
class HeadersConfig:
    expose_backend: bool = field(
        False, doc="add X-Tailgate-Backend: the backend's configured name or an opaque label"
    )
    expose_backend_address: bool = field(
        False, doc="unnamed backends appear as host:port instead of an opaque label"
    )
    request_id: str = "X-Request-ID"
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        (),
        parse=_networks,
        doc="peers whose X-Forwarded-*, X-Real-IP and Forwarded headers are kept; from anyone "
        "else they are replaced",
    )


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True


@dataclasses.dataclass(frozen=True)
class SloConfig:
    """The targets an OpenAI-style answer must meet to count toward goodput
    (``tailgate_slo_requests_total{result="met"}``); 0 leaves a target out."""

    ttft: float = _duration(0.5, non_negative, "time to first token target")
    tpot: float = _duration(0.05, non_negative, "time per output token target (streams only)")


def _otlp_endpoint(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a URL string, got {type(value).__name__}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"URL {value!r} must be http(s)://host[:port]/path")
    return value


@dataclasses.dataclass(frozen=True)
class OtlpConfig:
    endpoint: str | None = field(
        None,
        parse=_otlp_endpoint,
        doc="OTLP/HTTP traces URL (http://collector:4318/v1/traces); null: no export. "
        "Needs the otel extra: pip install 'tailgate[otel]'",
    )
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    timeout: float = _duration(10.0, positive, "one export's time limit")


@dataclasses.dataclass(frozen=True)
class TracingConfig:
    enabled: bool = field(
        True,
        doc="continue an incoming W3C traceparent with the gateway's own span id, or start a "
        "trace; false passes a client's traceparent through untouched and starts none",
    )
    service_name: str = "tailgate"
    otlp: OtlpConfig = dataclasses.field(default_factory=OtlpConfig)


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    listen: ListenConfig = dataclasses.field(default_factory=ListenConfig)
    admin: AdminConfig = dataclasses.field(default_factory=AdminConfig)
    backends: tuple[BackendConfig, ...] = ()
    discovery: DiscoveryConfig | None = None
    balancer: BalancerConfig = dataclasses.field(default_factory=BalancerConfig)
    timeouts: TimeoutsConfig = dataclasses.field(default_factory=TimeoutsConfig)
    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)
    admission: AdmissionConfig = dataclasses.field(default_factory=AdmissionConfig)
    outlier_detection: OutlierDetectionConfig = dataclasses.field(
        default_factory=OutlierDetectionConfig
    )
    circuit_breaker: CircuitBreakerConfig = dataclasses.field(default_factory=CircuitBreakerConfig)
    health_check: HealthCheckConfig = dataclasses.field(default_factory=HealthCheckConfig)
    retries: RetriesConfig = dataclasses.field(default_factory=RetriesConfig)
    hedging: HedgingConfig = dataclasses.field(default_factory=HedgingConfig)
    routes: tuple[RouteConfig, ...] = ()
    headers: HeadersConfig = dataclasses.field(default_factory=HeadersConfig)
    cache: CacheConfig = dataclasses.field(default_factory=CacheConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    slo: SloConfig = dataclasses.field(default_factory=SloConfig)
    tracing: TracingConfig = dataclasses.field(default_factory=TracingConfig)
    drain_timeout: float = _duration(30.0, non_negative)

    @property
    def open_duration_s(self) -> float:
        """The one base open duration of a backend's circuit (ejection or breaker), seconds:
        ``outlier_detection.base_ejection_time`` or its other name,
        ``circuit_breaker.recovery_time`` (see :func:`gateway.health.ejection.open_duration_s`)."""
        return open_duration_s(self.outlier_detection, self.circuit_breaker)
