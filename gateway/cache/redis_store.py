"""The optional shared store in Redis, so replicas of the gateway share their hits.

Redis is a help, never a dependency of the answer: every call is bounded by ``timeout_s``, and
a call that fails or is slow returns "absent" (a get) or is dropped (a put), so the request is
served uncached. After a failure Redis is skipped for ``cooldown_s``, so a Redis that is down
costs the requests nothing more than a lookup in memory. Entries expire in Redis itself
(``PX``); a get reads the time an entry has left with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from gateway.cache import codec
from gateway.cache.entry import CachedResponse
from gateway.config.model import CacheRedisConfig

log = logging.getLogger("tailgate")

ErrorListener = Callable[[str], None]  # called with the operation that failed: "get" or "put"


class RedisStore:
    def __init__(
        self,
        settings: CacheRedisConfig,
        clock: Callable[[], float],
        on_error: ErrorListener | None = None,
    ) -> None:
        if settings.url is None:
            raise ValueError("a Redis store needs cache.redis.url")
        self.settings = settings
        self._clock = clock
        self._on_error = on_error
        self._down_until = 0.0
        self._client = _client(settings.url, settings.timeout)

    @property
    def available(self) -> bool:
        """False while cooling down after a failure."""
        return self._clock() >= self._down_until

    async def get(self, key: str) -> tuple[CachedResponse, float] | None:
        """The entry under ``key`` with the seconds it has left, or None (absent or failed)."""
        if not self.available:
            return None
        name = self.settings.key_prefix + key
        try:
            async with asyncio.timeout(self.settings.timeout):
                async with self._client.pipeline(transaction=False) as pipe:
                    data, ttl_ms = await pipe.get(name).pttl(name).execute()
        except Exception as exc:  # any client failure means "uncached", never a failed request
            self._failed("get", exc)
            return None
        if data is None or ttl_ms is None or ttl_ms <= 0:
            return None
        entry = codec.decode(data)
        return (entry, ttl_ms / 1000) if entry is not None else None

    async def put(self, key: str, entry: CachedResponse, ttl_s: float) -> None:
        if not self.available:
            return
        try:
            async with asyncio.timeout(self.settings.timeout):
                await self._client.set(
                    self.settings.key_prefix + key,
                    codec.encode(entry),
                    px=max(1, int(ttl_s * 1000)),
                )
        except Exception as exc:
            self._failed("put", exc)

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception as exc:  # closing a broken connection must not fail a shutdown
            log.debug("closing the Redis client: %s", exc)

    def _failed(self, operation: str, exc: BaseException) -> None:
        if self.available:  # log once per outage, not once per request
            log.warning(
                "cache: Redis %s failed (%s); serving uncached for %.1fs",
                operation,
                type(exc).__name__,
                self.settings.cooldown,
            )
        self._down_until = self._clock() + self.settings.cooldown
        if self._on_error is not None:
            self._on_error(operation)


def _client(url: str, timeout_s: float) -> Any:
    """A redis-py asyncio client that never retries on its own: the timeout is the budget."""
    try:
        from redis.asyncio import Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise ValueError(
            "cache.redis.url needs the redis package: pip install 'tailgate[redis]'"
        ) from None
    return Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
