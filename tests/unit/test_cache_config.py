"""The ``cache:`` section: defaults, the per-route override, and its cross-field rule."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config.model import CacheConfig
from gateway.routing import Router

BACKEND = "backends: [{url: 'http://127.0.0.1:8001'}]\n"


def test_the_cache_is_off_by_default_and_keyed_by_tenant() -> None:
    cache = parse_config(BACKEND).cache
    assert cache == CacheConfig()
    assert not cache.enabled and not cache.shared and cache.coalesce
    assert cache.redis.url is None


def test_sizes_and_durations_parse() -> None:
    text = BACKEND + (
        "cache: {enabled: true, max_bytes: 8MiB, max_entry_bytes: 64KiB, ttl: 90s,\n"
        "        redis: {url: 'redis://127.0.0.1:6379/0', timeout: 20ms}}\n"
    )
    cache = parse_config(text).cache
    assert (cache.max_bytes, cache.max_entry_bytes, cache.ttl) == (8 * 1024**2, 65536, 90.0)
    assert cache.redis.timeout == pytest.approx(0.02)


def test_an_entry_limit_above_the_store_size_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"max_entry_bytes must not exceed cache\.max_bytes"):
        parse_config(BACKEND + "cache: {max_bytes: 1MiB, max_entry_bytes: 2MiB}\n")


def test_a_route_carries_its_override() -> None:
    text = BACKEND + (
        "routes:\n"
        "  - {name: cached, match: {path_prefix: /v1/completions}, groups: [{name: default}],"
        " cache: true}\n"
        "  - {name: inherit, groups: [{name: default}]}\n"
    )
    router = Router(parse_config(text).routes)
    assert [route.cache for route in router.routes] == [True, None]
    assert router.default.cache is None
