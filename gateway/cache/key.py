"""Which requests the cache may answer, and the key their answers are kept under.

Only deterministic requests are cached: ``temperature`` 0 (or ``top_k`` 1, greedy decoding
either way) with one choice (``n`` 1). A sampled request is never answered from the cache:
its next answer is meant to differ. The key is a digest of the route, the path, the tenant
(unless tenants share the cache), whether the answer streams, and the body in canonical form
(keys sorted, no whitespace, integral floats as integers), leaving out the fields that do not
change the answer.

Streamed and whole answers are kept apart: a streamed answer's chunks carry their own ids,
``object`` names and usage events, so a whole answer rebuilt from them (or a stream cut out of
a whole answer) would not be exactly what the backend sends.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Fields that change how or to whom an answer is delivered, never what it says.
IGNORED_FIELDS = frozenset({"stream", "user"})


@dataclass(frozen=True, slots=True)
class CacheKey:
    digest: str  # sha256 hex of everything the answer depends on
    streamed: bool


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one."""
    if not body or body.lstrip()[:1] != b"{":
        return None
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def is_deterministic(payload: Mapping[str, Any]) -> bool:
    """Greedy decoding of a single choice: the same request gets the same answer."""
    n = payload.get("n", 1)
    if not _is_number(n) or n != 1:
        return False
    temperature = payload.get("temperature")
    top_k = payload.get("top_k")
    return (_is_number(temperature) and temperature == 0) or (_is_number(top_k) and top_k == 1)


def cache_key(scope: str, path: str, tenant: str | None, payload: Mapping[str, Any]) -> CacheKey:
    """The key of ``payload``'s answer; ``tenant`` None when tenants share the cache."""
    streamed = payload.get("stream") is True
    kept = {k: _canonical(v) for k, v in payload.items() if k not in IGNORED_FIELDS}
    body = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    owner = "*" if tenant is None else f"t:{tenant}"
    parts = (scope, path, owner, "stream" if streamed else "whole", body)
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return CacheKey(digest, streamed)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _canonical(value: Any) -> Any:
    """``0`` and ``0.0`` mean the same to a backend; so do they to the key."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value
