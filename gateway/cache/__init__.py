"""The response cache: answers to deterministic requests kept, replayed and shared.

``key`` decides what may be cached and under which key; ``store`` is the in-process LRU;
``capture`` records an answer while it is relayed (SSE events cut by ``sse``); ``replay``
answers from an entry; ``coalesce`` makes identical concurrent requests share one trip
upstream; ``redis_store`` is the optional store shared by replicas; ``service`` puts them
behind the two calls the request path makes.
"""

from gateway.cache.capture import ChunkSource
from gateway.cache.replay import replay
from gateway.cache.service import CACHE_HEADER, Lookup, ResponseCache

__all__ = ["CACHE_HEADER", "ChunkSource", "Lookup", "ResponseCache", "replay"]
