"""Rate limits shared by every replica through Redis, falling back to per-replica limits.

Without ``admission.shared_limits.redis_url`` each replica keeps its own buckets
(:class:`~gateway.tenants.rate_limit.LocalLimiter`): G replicas behind a load balancer let a
tenant through at up to G times its configured rate. With it, one Lua script per admission
runs the same token buckets inside Redis (clocked by Redis's ``TIME``, so replicas' clocks
need not agree), making the limit one for the whole fleet.

Redis being slow or unreachable never fails a request: the replica decides alone (its own
buckets) and asks Redis again after ``shared_limits.retry_after``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.config.model import RateLimitConfig, SharedLimitsConfig
from gateway.tenants.rate_limit import ADMITTED, LocalLimiter, Verdict

log = logging.getLogger("tailgate")

# KEYS: token bucket, request bucket. ARGV: tokens/min, requests/min, tokens asked.
# Returns {wait_s as a string, which limit}: wait "0" means admitted and charged.
ADMIT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function level(key, per_minute)
  local v = redis.call('HMGET', key, 'level', 'at')
  local lvl = tonumber(v[1]) or per_minute
  local at = tonumber(v[2]) or now
  return math.min(per_minute, lvl + math.max(0, now - at) * per_minute / 60)
end
local tpm, rpm, asked = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, requests
if rpm > 0 then
  requests = level(KEYS[2], rpm)
  if requests < 1 then return {tostring((1 - requests) * 60 / rpm), 'requests'} end
end
if tpm > 0 then
  tokens = level(KEYS[1], tpm)
  local need = math.min(asked, tpm)
  if tokens < need then return {tostring((need - tokens) * 60 / tpm), 'tokens'} end
  redis.call('HSET', KEYS[1], 'level', tostring(tokens - asked), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[1], 120)
end
if rpm > 0 then
  redis.call('HSET', KEYS[2], 'level', tostring(requests - 1), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[2], 120)
end
return {'0', ''}
"""

# KEYS: token bucket. ARGV: tokens to give back (negative: charge more), tokens/min.
SETTLE_SCRIPT = """
local v = redis.call('HMGET', KEYS[1], 'level', 'at')
if not v[1] then return 0 end
local lvl = math.min(tonumber(ARGV[2]), tonumber(v[1]) + tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'level', tostring(lvl))
return 1
"""


class TenantLimiter:
    """The limiter the request path asks: shared through Redis when configured, else local."""

    def __init__(self, settings: SharedLimitsConfig) -> None:
        self.settings = settings
        self.local = LocalLimiter()
        self._redis: Any = None
        self._admit: Any = None
        self._settle: Any = None
        self._down_until = 0.0
        self.fallbacks = 0  # decisions taken locally because Redis did not answer
        if settings.redis_url:
            import redis.asyncio as redis_asyncio  # only replicas that share limits need it

            self._redis = redis_asyncio.Redis.from_url(
                settings.redis_url,
                socket_timeout=settings.timeout,
                socket_connect_timeout=settings.timeout,
            )
            self._admit = self._redis.register_script(ADMIT_SCRIPT)
            self._settle = self._redis.register_script(SETTLE_SCRIPT)

    @property
    def shared(self) -> bool:
        return self._redis is not None

    def _keys(self, tenant: str) -> list[str]:
        prefix = self.settings.key_prefix
        return [f"{prefix}{{{tenant}}}:tokens", f"{prefix}{{{tenant}}}:requests"]

    def _use_redis(self, now: float) -> bool:
        return self._redis is not None and now >= self._down_until

    def _failed(self, exc: BaseException, now: float) -> None:
        self.fallbacks += 1
        if now >= self._down_until:
            log.warning(
                "shared rate limits unavailable (%s): per-replica limits for %.0fs",
                exc or type(exc).__name__,
                self.settings.retry_after,
            )
        self._down_until = now + self.settings.retry_after

    async def admit(self, tenant: str, limits: RateLimitConfig, tokens: int, now: float) -> Verdict:
        if not (limits.tokens_per_minute or limits.requests_per_minute):
            return ADMITTED
        if self._use_redis(now):
            args = [limits.tokens_per_minute, limits.requests_per_minute, tokens]
            try:
                async with asyncio.timeout(self.settings.timeout):
                    wait, which = await self._admit(keys=self._keys(tenant), args=args)
                wait_s = float(wait)
                return ADMITTED if wait_s <= 0 else Verdict(wait_s, which.decode())
            except Exception as exc:  # any Redis trouble: decide locally, never fail
                self._failed(exc, now)
        return self.local.admit(tenant, limits, tokens, now)

    async def settle(
        self, tenant: str, limits: RateLimitConfig, estimated: int, actual: int, now: float
    ) -> None:
        if actual == estimated or not limits.tokens_per_minute:
            return
        if self._use_redis(now):
            args = [estimated - actual, limits.tokens_per_minute]
            try:
                async with asyncio.timeout(self.settings.timeout):
                    await self._settle(keys=self._keys(tenant)[:1], args=args)
                return
            except Exception as exc:
                self._failed(exc, now)
        self.local.settle(tenant, estimated, actual, now)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
