"""Per-tenant token-rate and request-rate limits: token buckets, one minute's worth deep.

A request is admitted when each of its tenant's buckets holds what it asks (its estimated
tokens, capped at the bucket's depth so a huge request can still pass a full bucket; one
request). It is charged the estimate at once and corrected when the response's ``usage``
tells the real count (:meth:`LocalLimiter.settle`), so a bucket may go below zero. A refused
request learns ``retry_after_s``: how long until the bucket holds what it asked, so a client
that waits that long and retries is admitted (unless others spent the refill first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.config.model import RateLimitConfig

SECONDS_PER_MINUTE = 60.0


@dataclass(frozen=True)
class Verdict:
    """``retry_after_s`` 0 means admitted; else the request is refused (429)."""

    retry_after_s: float
    limit: str = ""  # "tokens" or "requests": which one refused it

    @property
    def admitted(self) -> bool:
        return self.retry_after_s <= 0


ADMITTED = Verdict(0.0)


class TokenBucket:
    """``per_minute`` units refilled continuously, holding at most ``per_minute``."""

    __slots__ = ("level", "per_minute", "updated_at")

    def __init__(self, per_minute: float, now: float) -> None:
        self.per_minute = per_minute
        self.level = per_minute
        self.updated_at = now

    def _refill(self, now: float) -> None:
        elapsed_s = max(0.0, now - self.updated_at)
        rate = self.per_minute / SECONDS_PER_MINUTE
        self.level = min(self.per_minute, self.level + elapsed_s * rate)
        self.updated_at = now

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` (capped at the depth) is available; 0 if it is now."""
        self._refill(now)
        need = min(amount, self.per_minute)
        if self.level >= need:
            return 0.0
        return (need - self.level) * SECONDS_PER_MINUTE / self.per_minute

    def take(self, amount: float) -> None:
        self.level -= amount

    def give_back(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level = min(self.per_minute, self.level + amount)


def retry_after_header(wait_s: float) -> str:
    """Whole seconds, rounded up, so obeying it is enough (RFC 9110 allows no fractions)."""
    return str(max(1, math.ceil(wait_s)))


class LocalLimiter:
    """Every tenant's buckets in this replica. Pure: the clock is passed in."""

    def __init__(self) -> None:
        self._tokens: dict[str, TokenBucket] = {}
        self._requests: dict[str, TokenBucket] = {}

    def _bucket(
        self, table: dict[str, TokenBucket], tenant: str, per_minute: int, now: float
    ) -> TokenBucket | None:
        if per_minute <= 0:
            table.pop(tenant, None)
            return None
        bucket = table.get(tenant)
        if bucket is None:
            bucket = table[tenant] = TokenBucket(per_minute, now)
        elif bucket.per_minute != per_minute:  # a reload changed the limit
            bucket.per_minute = per_minute
            bucket.level = min(bucket.level, per_minute)
        return bucket

    def admit(self, tenant: str, limits: RateLimitConfig, tokens: int, now: float) -> Verdict:
        """Charge ``tokens`` (the estimate) and one request, or say how long to wait."""
        token_bucket = self._bucket(self._tokens, tenant, limits.tokens_per_minute, now)
        request_bucket = self._bucket(self._requests, tenant, limits.requests_per_minute, now)
        if request_bucket is not None:
            wait_s = request_bucket.wait_s(1, now)
            if wait_s > 0:
                return Verdict(wait_s, "requests")
        if token_bucket is not None:
            wait_s = token_bucket.wait_s(tokens, now)
            if wait_s > 0:
                return Verdict(wait_s, "tokens")
            token_bucket.take(tokens)
        if request_bucket is not None:
            request_bucket.take(1)
        return ADMITTED

    def settle(self, tenant: str, estimated: int, actual: int, now: float) -> None:
        """Correct the charge once the response told the real count."""
        bucket = self._tokens.get(tenant)
        if bucket is not None and actual != estimated:
            bucket.give_back(estimated - actual, now)

    def snapshot(self, now: float) -> dict[str, dict[str, float]]:
        """What each limited tenant has left in its buckets (for /admin)."""
        out: dict[str, dict[str, float]] = {}
        for kind, table in (("tokens", self._tokens), ("requests", self._requests)):
            for tenant, bucket in table.items():
                bucket.wait_s(0, now)  # refill to now
                out.setdefault(tenant, {})[f"{kind}_left"] = round(bucket.level, 1)
        return out
