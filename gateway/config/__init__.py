"""Loading and validating the gateway's YAML configuration.

``load_config(path)`` returns a frozen :class:`GatewayConfig` or raises :class:`ConfigError`
listing every problem with its field path, so a bad file never half-applies.
"""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gateway.config.model import (
    AdminConfig,
    BackendConfig,
    BalancerConfig,
    CircuitBreakerConfig,
    DiscoveryConfig,
    GatewayConfig,
    HealthCheckConfig,
    LimitsConfig,
    ListenConfig,
    OutlierDetectionConfig,
    RetriesConfig,
    RouteConfig,
    TimeoutsConfig,
)
from gateway.config.schema import ConfigError, Problem, load

__all__ = [
    "AdminConfig",
    "BackendConfig",
    "BalancerConfig",
    "CircuitBreakerConfig",
    "ConfigError",
    "DiscoveryConfig",
    "GatewayConfig",
    "HealthCheckConfig",
    "LimitsConfig",
    "ListenConfig",
    "OutlierDetectionConfig",
    "Problem",
    "RetriesConfig",
    "RouteConfig",
    "TimeoutsConfig",
    "default_config_text",
    "load_config",
    "parse_config",
]


def default_config_text() -> str:
    """The embedded default config (the README's main command runs on it)."""
    return resources.files("gateway").joinpath("default_config.yaml").read_text("utf-8")


def load_config(path: str | Path) -> GatewayConfig:
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise ConfigError([Problem("<file>", f"cannot read {path}: {exc.strerror}")]) from None
    return parse_config(text)


def parse_config(text: str) -> GatewayConfig:
    try:
        data: Any = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<yaml>"
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem(f"<yaml {where}>", f"not valid YAML: {reason}")]) from None
    problems: list[Problem] = []
    config = load(GatewayConfig, data, "", problems)
    if config is not None:
        problems.extend(_cross_checks(config))
    if problems or config is None:
        raise ConfigError(problems or [Problem("", "invalid config")])
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping.

    Plain YAML keeps the last value silently, so a second ``health_check:`` further down a
    long file would quietly override the first; an operator should hear about it instead.
    Keys brought in by a ``<<`` merge may still be overridden, as YAML intends.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first_seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first_seen.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: the schema reports it
                if earlier is not key_node:
                    first_line = earlier.start_mark.line + 1
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first given on line {first_line})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def _cross_checks(config: GatewayConfig) -> list[Problem]:
    """Rules that span several fields."""
    problems: list[Problem] = []
    if config.backends and config.discovery is not None and config.discovery.type != "static":
        problems.append(Problem("discovery", "give either backends or discovery, not both"))
    if not config.backends and (config.discovery is None or config.discovery.type == "static"):
        problems.append(
            Problem("backends", "at least one backend (or a discovery section) is needed")
        )
    seen_urls: dict[str, int] = {}
    seen_names: dict[str, int] = {}
    for i, backend in enumerate(config.backends):
        key = backend.url.lower()
        if key in seen_urls:
            problems.append(
                Problem(f"backends[{i}].url", f"duplicate of backends[{seen_urls[key]}].url")
            )
        seen_urls.setdefault(key, i)
        name = backend.display_name
        if name in seen_names:
            problems.append(
                Problem(
                    f"backends[{i}].name",
                    f"{name!r} is already used by backends[{seen_names[name]}]",
                )
            )
        seen_names.setdefault(name, i)
    groups = {b.group for b in config.backends}
    if config.discovery is not None:
        groups.add(config.discovery.group)
    for r, route in enumerate(config.routes):
        for g, group in enumerate(route.groups):
            if group.name not in groups:
                problems.append(
                    Problem(
                        f"routes[{r}].groups[{g}].name", f"no backend is in group {group.name!r}"
                    )
                )
    if config.timeouts.per_try > config.timeouts.total:
        problems.append(Problem("timeouts.per_try", "must not exceed timeouts.total"))
    if (
        config.admin.enabled
        and (config.admin.host, config.admin.port)
        == (
            config.listen.host,
            config.listen.port,
        )
        and config.listen.port != 0
    ):
        problems.append(Problem("admin.port", "must differ from listen.port"))
    od, cb = config.outlier_detection, config.circuit_breaker
    if (
        od.base_ejection_time is not None
        and cb.recovery_time is not None
        and od.base_ejection_time != cb.recovery_time
    ):
        problems.append(
            Problem(
                "circuit_breaker.recovery_time",
                "differs from outlier_detection.base_ejection_time; they are one setting "
                "(the breaker and the outlier detector share a backend's circuit): give one",
            )
        )
    if config.open_duration_s <= 0:
        problems.append(Problem("outlier_detection.base_ejection_time", "must be greater than 0"))
    if config.open_duration_s > od.max_ejection_time:
        problems.append(
            Problem("outlier_detection.base_ejection_time", "exceeds max_ejection_time")
        )
    queue = config.balancer.queue_depth
    if queue.fresh > queue.stale:
        problems.append(Problem("balancer.queue_depth.fresh", "must not exceed queue_depth.stale"))
    problems.extend(_tenant_checks(config))
    if config.retries.backoff_base > config.retries.backoff_max:
        problems.append(Problem("retries.backoff_base", "exceeds retries.backoff_max"))
    for path, url in (
        ("cache.redis.url", config.cache.redis.url),
        ("admission.shared_limits.redis_url", config.admission.shared_limits.redis_url),
    ):
        if url is not None and not _installed("redis.asyncio"):
            problems.append(
                Problem(path, "a Redis store needs redis-py: pip install 'tailgate[redis]'")
            )
    if config.tracing.otlp.endpoint is not None and not _otel_installed():
        problems.append(
            Problem(
                "tracing.otlp.endpoint",
                "OTLP export needs the OpenTelemetry SDK: pip install 'tailgate[otel]'",
            )
        )
    if config.hedging.min_delay > config.hedging.max_delay:
        problems.append(Problem("hedging.min_delay", "exceeds hedging.max_delay"))
    return problems


def _tenant_checks(config: GatewayConfig) -> list[Problem]:
    """A tenant named twice, or one key hash given to two tenants, is ambiguous."""
    problems: list[Problem] = []
    names: dict[str, int] = {}
    owners: dict[str, int] = {}
    for i, tenant in enumerate(config.admission.tenants):
        if tenant.name in names:
            first = names[tenant.name]
            problems.append(
                Problem(f"admission.tenants[{i}].name", f"already used by tenants[{first}]")
            )
        names.setdefault(tenant.name, i)
        for digest in tenant.api_keys:
            if owners.setdefault(digest, i) != i:
                problems.append(
                    Problem(
                        f"admission.tenants[{i}].api_keys",
                        f"a key hash is also given to tenants[{owners[digest]}]",
                    )
                )
    return problems


def _otel_installed() -> bool:
    return _installed("opentelemetry.exporter.otlp.proto.http")


def _installed(module: str) -> bool:
    """Is an optional extra's module importable (without importing it)?"""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False
