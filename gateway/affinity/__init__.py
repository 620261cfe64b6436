"""Affinity: which backend probably holds a request's prompt in its prefix cache.

``blocks`` cuts a prompt into chained block hashes; ``prefix_index`` learns which backends
recently received each block (bounded per backend, forgotten when a backend leaves);
``ring`` gives a prefix a deterministic home that every gateway replica agrees on, and orders
a few backends for a session key (``HashRing.rendezvous``).
"""

from gateway.affinity.blocks import BLOCK_CHARS, CHARS_PER_TOKEN, block_hashes
from gateway.affinity.prefix_index import PrefixIndex
from gateway.affinity.ring import HashRing

__all__ = ["BLOCK_CHARS", "CHARS_PER_TOKEN", "HashRing", "PrefixIndex", "block_hashes"]
