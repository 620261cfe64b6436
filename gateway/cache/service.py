"""The response cache as the request path sees it: one lookup before forwarding, one capture
around relaying a successful answer.

    lookup = await cache.lookup(route, method, path, headers, body, tenant, wait_s)
    lookup is None          -> the cache is off for this route
    lookup.entry            -> a hit: replay it, forward nothing
    otherwise               -> forward; relay through lookup.capture(...); lookup.close() at
                               the end, whatever happened (it releases the waiting followers)

Order of a lookup: the request's own bypass rules, the in-process store, the flight of an
identical request already upstream (wait for it), then the shared store. Only the leader of a
flight asks the shared store, so N identical requests cost one Redis call and one backend call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.cache.capture import CapturingBody, ChunkSource, Recorder
from gateway.cache.coalesce import SingleFlight
from gateway.cache.entry import CachedResponse
from gateway.cache.key import CacheKey, cache_key, is_deterministic, json_object
from gateway.cache.redis_store import RedisStore
from gateway.cache.store import MemoryStore, StoreLimits
from gateway.config.model import CacheConfig
from gateway.metrics import GatewayMetrics
from gateway.routing import Route

Verdict = Literal["hit", "miss", "bypass"]
CACHE_HEADER = "X-Tailgate-Cache"


@dataclass
class Lookup:
    """What the cache made of one request."""

    verdict: Verdict
    entry: CachedResponse | None = None  # the answer to replay, on a hit
    key: CacheKey | None = None  # where a fresh answer is kept; None: it is not kept
    leading: bool = False  # identical requests wait for this one's answer
    cache: ResponseCache | None = field(default=None, repr=False)

    def capture(self, status: int, headers: Mapping[str, str], source: ChunkSource) -> ChunkSource:
        """``source`` to relay: recording it when its answer may be kept (a 200 that its
        backend did not mark ``Cache-Control: no-store`` or ``private``)."""
        if self.key is None or self.cache is None or status != 200:
            return source
        if _cache_control(headers) & {"no-store", "private"}:
            return source
        limit = self.cache.settings.max_entry_bytes
        content_type = headers.get("Content-Type", "")
        return CapturingBody(source, Recorder(status, content_type, limit), self._done)

    def _done(self, entry: CachedResponse | None) -> None:
        if entry is not None and self.key is not None and self.cache is not None:
            self.cache.keep(self.key, entry)
        self.release(entry)

    def close(self) -> None:
        """The request is over: followers still waiting go on alone."""
        self.release(None)

    def release(self, entry: CachedResponse | None) -> None:
        """Hand ``entry`` to the followers of this request (once; None: they go alone)."""
        if self.leading and self.key is not None and self.cache is not None:
            self.leading = False
            self.cache.flights.end(self.key.digest, entry)


class ResponseCache:
    """The in-process LRU store, the flights in progress and the optional shared store."""

    def __init__(
        self, settings: CacheConfig, metrics: GatewayMetrics, clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self._clock = clock
        self.memory = MemoryStore(_limits(settings), on_evict=self._evicted)
        self.flights: SingleFlight[CachedResponse] = SingleFlight()
        self.shared = self._shared_store(settings)
        self._background: set[asyncio.Task[None]] = set()

    def enabled_for(self, route: Route) -> bool:
        return route.cache if route.cache is not None else self.settings.enabled

    async def lookup(
        self,
        route: Route,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes | None,
        tenant: str,
        wait_s: float,
    ) -> Lookup | None:
        """None when the cache is off for ``route``; ``tenant`` is who the request is for (see
        ``gateway.tenants``: one tenant never gets another's answer unless the cache is
        shared); ``wait_s`` bounds the wait for an identical request's answer (the route's
        timeout)."""
        if not self.enabled_for(route):
            return None
        lookup = await self._lookup(route, method, path, headers, body, tenant, wait_s)
        self._metrics.cache_requests_for(route.name, lookup.verdict).inc()
        return lookup

    async def _lookup(
        self,
        route: Route,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes | None,
        tenant: str,
        wait_s: float,
    ) -> Lookup:
        directives = _cache_control(headers)
        payload = json_object(body) if method == "POST" and body else None
        if "no-store" in directives or payload is None or not is_deterministic(payload):
            return Lookup("bypass")
        key_tenant = None if self.settings.shared else tenant
        key = cache_key(route.name, path, key_tenant, payload)
        if "no-cache" in directives:  # a fresh answer, which then refreshes the entry
            return Lookup("bypass", key=key, cache=self)
        entry = self.memory.get(key.digest, self._clock())
        if entry is not None:
            return Lookup("hit", entry)
        leading = False
        if self.settings.coalesce:
            if not self.flights.lead(key.digest):
                entry = await self.flights.follow(key.digest, wait_s)
                if entry is not None:
                    self._metrics.cache_coalesced_for(route.name).inc()
                    return Lookup("hit", entry)
                return Lookup("miss", key=key, cache=self)  # the leader had none: go alone
            leading = True
        lookup = Lookup("miss", key=key, leading=leading, cache=self)
        if self.shared is None:
            return lookup
        try:
            found = await self.shared.get(key.digest)
        except BaseException:  # cancelled (route timeout): release the followers first
            lookup.close()
            raise
        if found is None:
            return lookup
        entry, ttl_s = found
        now = self._clock()
        self.memory.put(key.digest, entry, now + min(ttl_s, self.settings.ttl), now)
        self._publish()
        lookup.release(entry)
        return Lookup("hit", entry)

    def keep(self, key: CacheKey, entry: CachedResponse) -> None:
        """A fresh answer: kept here for ``ttl`` and sent to the shared store."""
        now = self._clock()
        kept = self.memory.put(key.digest, entry, now + self.settings.ttl, now)
        self._publish()
        if kept and self.shared is not None:
            self._spawn(self.shared.put(key.digest, entry, self.settings.ttl))

    def apply(self, settings: CacheConfig) -> None:
        """A reloaded config: new limits apply at once; entries that still fit stay."""
        if settings == self.settings:
            return
        old = self.settings
        self.settings = settings
        self.memory.resize(_limits(settings), self._clock())
        self._publish()
        if settings.redis != old.redis:
            previous, self.shared = self.shared, self._shared_store(settings)
            if previous is not None:
                self._spawn(previous.close())

    def snapshot(self) -> dict[str, object]:
        """What ``/admin/cache`` shows."""
        s = self.settings
        shared = self.shared
        return {
            "enabled": s.enabled,
            "entries": len(self.memory),
            "bytes": self.memory.bytes_held,
            "max_entries": s.max_entries,
            "max_bytes": s.max_bytes,
            "ttl_s": s.ttl,
            "shared_across_tenants": s.shared,
            "in_flight": len(self.flights),
            "shared_store": None if shared is None else {"available": shared.available},
        }

    async def close(self) -> None:
        """Finish the shared-store writes in progress (each bounded by its timeout)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.shared is not None:
            await self.shared.close()

    def _shared_store(self, settings: CacheConfig) -> RedisStore | None:
        if settings.redis.url is None:
            return None
        return RedisStore(settings.redis, self._clock, self._shared_store_failed)

    def _shared_store_failed(self, operation: str) -> None:
        self._metrics.cache_shared_store_errors.labels(operation).inc()

    def _evicted(self, reason: str) -> None:
        self._metrics.cache_evictions.labels(reason).inc()
        self._publish()

    def _publish(self) -> None:
        self._metrics.cache_bytes.set(self.memory.bytes_held)
        self._metrics.cache_entries.set(len(self.memory))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` off the request path, holding a reference until it is done."""
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no loop (a reload outside one): nothing was ever connected
            work.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _limits(settings: CacheConfig) -> StoreLimits:
    return StoreLimits(settings.max_bytes, settings.max_entries, settings.max_entry_bytes)


def _cache_control(headers: Mapping[str, str]) -> frozenset[str]:
    """Cache-Control directive names, lower-cased (``no-cache``, ``no-store``)."""
    value = headers.get("Cache-Control")
    if not value:
        return frozenset()
    return frozenset(part.split("=", 1)[0].strip().lower() for part in value.split(","))
