"""The gateway's configuration as frozen dataclasses: one class per YAML section.

Names follow ARCHITECTURE.md and, where one exists, Envoy's name for the same setting
(``consecutive_5xx``, ``base_ejection_time``, ``per_try_timeout`` ...). Durations are stored
in seconds (``*_s`` in code, ``10s`` in YAML); sizes in bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

from gateway.config.schema import field, in_range, non_negative, positive
from gateway.config.units import parse_duration, parse_size
from gateway.failures import RETRY_CONDITIONS
from gateway.load_reports import PROFILES

Policy = Literal[
    "weighted_score", "round_robin", "random", "least_request", "peak_ewma", "prefix_aware"
]
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


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    url: str = field(parse=parse_backend_url)
    name: str | None = None
    weight: float = field(1.0, check=positive)
    group: str = "default"

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


@dataclasses.dataclass(frozen=True)
class DiscoveryConfig:
    """Where the backend set comes from when it is not a static ``backends:`` list."""

    type: Literal["static", "file", "dns"] = "static"
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
    scrape_interval: float = _duration(0.0, non_negative, "0 turns /metrics scraping off")
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
        4096, check=positive, doc="prompt blocks (~64 tokens each) remembered per backend"
    )
    load_bound: float = field(
        0.25,
        check=non_negative,
        doc="affinity never sends to a backend above (1 + this) x mean load",
    )
    session_header: str | None = field(None, doc="request header whose value is the session key")
    session_affinity: bool = field(False, doc="the same session key prefers the same backend")


@dataclasses.dataclass(frozen=True)
class BalancerConfig:
    policy: Policy = "weighted_score"
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
    per_try: float = _duration(30.0, positive)
    total: float = _duration(60.0, positive)
    request_header: float = _duration(10.0, positive, "a client must send its headers within this")
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


@dataclasses.dataclass(frozen=True)
class HealthCheckConfig:
    enabled: bool = True
    path: str = "/ready"
    interval: float = _duration(5.0, positive)
    jitter_percent: float = field(10.0, check=in_range(0, 99))
    timeout: float = _duration(1.0, positive)
    unhealthy_threshold: int = field(3, check=positive)
    healthy_threshold: int = field(2, check=positive)


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


@dataclasses.dataclass(frozen=True)
class RetriesConfig:
    attempts: int = field(2, check=in_range(1, 10))
    retry_on: tuple[str | int, ...] = field(
        ("connect-failure", "reset", 502, 503, 504), parse=_retry_on
    )
    budget_percent: float = field(20.0, check=in_range(0, 100))
    min_retries_per_second: float = field(3.0, check=non_negative)
    backoff_base: float = _duration(0.025, non_negative)
    backoff_max: float = _duration(0.25, non_negative)
    buffer_limit: int = field(1024 * 1024, parse=parse_size)
    retry_non_idempotent: bool = field(False, doc="inference POSTs are safe to resend; opt in")


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

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("a route needs at least one group")
        if sum(g.weight for g in self.groups) <= 0:
            raise ValueError("a route's group weights must not all be 0")


@dataclasses.dataclass(frozen=True)
class HeadersConfig:
    expose_backend: bool = field(False, doc="add X-Tailgate-Backend naming the serving backend")
    expose_backend_address: bool = field(
        False, doc="unnamed backends appear as host:port instead of an opaque label"
    )
    request_id: str = "X-Request-ID"


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    listen: ListenConfig = dataclasses.field(default_factory=ListenConfig)
    admin: AdminConfig = dataclasses.field(default_factory=AdminConfig)
    backends: tuple[BackendConfig, ...] = ()
    discovery: DiscoveryConfig | None = None
    balancer: BalancerConfig = dataclasses.field(default_factory=BalancerConfig)
    timeouts: TimeoutsConfig = dataclasses.field(default_factory=TimeoutsConfig)
    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)
    outlier_detection: OutlierDetectionConfig = dataclasses.field(
        default_factory=OutlierDetectionConfig
    )
    circuit_breaker: CircuitBreakerConfig = dataclasses.field(default_factory=CircuitBreakerConfig)
    health_check: HealthCheckConfig = dataclasses.field(default_factory=HealthCheckConfig)
    retries: RetriesConfig = dataclasses.field(default_factory=RetriesConfig)
    routes: tuple[RouteConfig, ...] = ()
    headers: HeadersConfig = dataclasses.field(default_factory=HeadersConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    drain_timeout: float = _duration(30.0, non_negative)

    @property
    def open_duration_s(self) -> float:
        """The one base open duration of a backend's circuit (ejection or breaker), seconds.

        ``outlier_detection.base_ejection_time`` and ``circuit_breaker.recovery_time`` name the
        same thing (the breaker and the outlier detector share one state machine); give either.
        """
        od, cb = self.outlier_detection, self.circuit_breaker
        if od.base_ejection_time is not None:
            return od.base_ejection_time
        if cb.recovery_time is not None:
            return cb.recovery_time
        return 30.0
