"""The tenant gate: what the request path asks before queueing a request, and after answering.

``admit`` names the tenant and class (or refuses: 401 for a bad key, 429 over a rate limit)
and charges the tenant's buckets with the body's token estimate; ``settle`` corrects the charge
from what the relayed answer showed (:class:`gateway.llm_stream.AnswerReport`: its ``usage``,
else its counted events). The request path keeps the :class:`Admitted` for the way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config.model import GatewayConfig
from gateway.llm_stream import AnswerReport
from gateway.metrics import GatewayMetrics
from gateway.pending_queue import Priority
from gateway.request_info import RequestInfo
from gateway.tenants.identity import Tenant, TenantDirectory, Unauthorized
from gateway.tenants.keys import KeysFile, upstream_authorization
from gateway.tenants.rate_limit import retry_after_header
from gateway.tenants.shared_limit import TenantLimiter
from gateway.tenants.usage import estimate_tokens, tokens_used


class Admitted:
    """One admitted request's tenant, class and token estimate (its capacity ticket carries
    the tenant, class and cost into the pending queue).

    The estimate comes from the request's :class:`RequestInfo` (the body parsed once, for
    every decision): nothing here parses the body again.
    """

    __slots__ = ("charged_tokens", "info", "priority", "tenant")

    def __init__(self, tenant: Tenant, priority: Priority, info: RequestInfo) -> None:
        self.tenant = tenant
        self.priority = priority
        self.charged_tokens = 0  # taken from the token bucket at admission
        self.info = info

    @property
    def estimated_tokens(self) -> int:
        return estimate_tokens(self.info) or 0

    @property
    def prompt_tokens(self) -> int:
        return self.info.prompt_tokens

    @property
    def cost(self) -> float:
        """Its weight in the fair queue: estimated tokens, else one request."""
        return float(self.estimated_tokens or 1)


@dataclass(frozen=True)
class Refusal:
    """A request refused before queueing, in OpenAI's error terms (type and code)."""

    status: int  # 401 or 429
    kind: str  # OpenAI's error type: invalid_request_error, tokens, requests
    code: str  # OpenAI's error code: invalid_api_key, rate_limit_exceeded
    message: str
    headers: dict[str, str]


class TenantGate:
    """Built from the config; kept across reloads so buckets and the keys file survive."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics) -> None:
        self.metrics = metrics
        self.limiter = TenantLimiter(config.admission.shared_limits)
        self._retired: list[TenantLimiter] = []  # replaced by a reload; closed on shutdown
        self.keys_file: KeysFile | None = None
        self.install(config)

    def install(self, config: GatewayConfig) -> None:
        adm = config.admission
        path = adm.api_keys.file
        if path is None:
            self.keys_file = None
        elif self.keys_file is None or str(self.keys_file.path) != path:
            self.keys_file = KeysFile(path)
        if adm.shared_limits != self.limiter.settings:
            self._retired.append(self.limiter)
            self.limiter = TenantLimiter(adm.shared_limits)
        self.config = adm
        self.directory = TenantDirectory(adm, self.keys_file)
        self.backend_keys = {b.display_name: b.api_key for b in config.backends if b.api_key}

    async def admit(
        self, headers: Mapping[str, str], info: RequestInfo, now: float
    ) -> Admitted | Refusal:
        found = self.directory.identify(headers)
        if isinstance(found, Unauthorized):
            self.metrics.tenant_refused.labels("-", "unauthorized").inc()
            return Refusal(401, "invalid_request_error", "invalid_api_key", found.message, {})
        tenant = found.tenant
        ticket = Admitted(tenant, found.priority, info)
        limits = tenant.limits
        if not (limits.tokens_per_minute or limits.requests_per_minute):
            return ticket  # no limit to ask (the default tenant's, as shipped): no coroutine
        if limits.tokens_per_minute:
            ticket.charged_tokens = ticket.estimated_tokens
        verdict = await self.limiter.admit(tenant.name, limits, ticket.charged_tokens, now)
        if not verdict.admitted:
            self.metrics.tenant_refused.labels(tenant.name, f"{verdict.limit}_per_minute").inc()
            message = (
                f"tenant {tenant.name!r} is over its {verdict.limit} per minute limit; "
                f"retry after {retry_after_header(verdict.retry_after_s)}s"
            )
            headers_out = {"Retry-After": retry_after_header(verdict.retry_after_s)}
            return Refusal(429, verdict.limit, "rate_limit_exceeded", message, headers_out)
        return ticket

    async def settle(
        self, ticket: Admitted, served: bool, answer: AnswerReport | None, now: float
    ) -> None:
        """Count the tokens the answer showed and correct the tenant's bucket; a request no
        backend served (shed, failed) gets its whole charge back."""
        used = tokens_used(answer, ticket.prompt_tokens) if answer is not None else None
        tenant = ticket.tenant
        self.metrics.tenant_requests_for(tenant.name, ticket.priority.label).inc()
        if used is None:
            used = ticket.charged_tokens if served else 0  # else the estimate stands
        self.metrics.tenant_tokens_for(tenant.name).inc(used)
        if tenant.limits.tokens_per_minute:  # only a token bucket has a charge to correct
            await self.limiter.settle(tenant.name, tenant.limits, ticket.charged_tokens, used, now)

    def upstream_authorization(self, client_value: str | None, backend: str) -> str | None:
        """Without API keys the client's ``Authorization`` passes as before; with them it is a
        tenant's credential for tailgate and goes on only if ``forward_client_key``."""
        keys = self.config.api_keys
        forward = keys.forward_client_key or not keys.enabled
        return upstream_authorization(client_value, forward, self.backend_keys.get(backend))

    def publish(self, now: float) -> None:
        """Limits and what is left of them as gauges (called once a second, off the path)."""
        m = self.metrics
        for cfg in self.config.tenants:
            limits = self.directory.tenant(cfg.name).limits
            m.tenant_limit.labels(cfg.name, "tokens").set(limits.tokens_per_minute)
            m.tenant_limit.labels(cfg.name, "requests").set(limits.requests_per_minute)
        for tenant, levels in self.limiter.local.snapshot(now).items():
            for key, level in levels.items():
                m.tenant_limit_left.labels(tenant, key.removesuffix("_left")).set(level)

    def snapshot(self, now: float) -> dict[str, object]:
        """Limits and what is left of them, per tenant (for /admin/tenants)."""
        left = self.limiter.local.snapshot(now)
        tenants = {}
        for cfg in self.config.tenants:
            tenant = self.directory.tenant(cfg.name)
            tenants[cfg.name] = {
                "priority": tenant.priority.label,
                "weight": tenant.weight,
                "tokens_per_minute": tenant.limits.tokens_per_minute,
                "requests_per_minute": tenant.limits.requests_per_minute,
                **left.pop(cfg.name, {}),
            }
        for name, levels in left.items():
            tenants[name] = {
                "tokens_per_minute": self.config.default_limits.tokens_per_minute,
                "requests_per_minute": self.config.default_limits.requests_per_minute,
                **levels,
            }
        return {
            "api_keys": self.config.api_keys.enabled,
            "shared_limits": self.limiter.shared,
            "shared_limit_fallbacks": self.limiter.fallbacks,
            "tenants": tenants,
        }

    async def close(self) -> None:
        for limiter in [*self._retired, self.limiter]:
            await limiter.close()
        self._retired.clear()
