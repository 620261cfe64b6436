"""Who is asking, and how urgently: a request's tenant and priority class, from its headers.

With API keys on, the tenant is the owner of the ``Authorization: Bearer`` key (unknown or
missing key: the request is refused, 401). Otherwise the tenant is the tenant header's value
(``X-Tenant``), or the one anonymous tenant when there is none. The priority class is the
priority header's (``X-Priority``), else the tenant's configured one, else ``standard``; with
API keys on, the tenant's configured class is a ceiling the header cannot raise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config.model import AdmissionConfig, RateLimitConfig
from gateway.pending_queue import Priority
from gateway.tenants.keys import KeysFile, bearer_token, key_hash

ANONYMOUS = "anonymous"
OVERFLOW = "other"  # every header-named tenant past MAX_HEADER_TENANTS
MAX_TENANT_NAME = 64  # a header value becomes a metric label: keep it short
MAX_HEADER_TENANTS = 10_000  # header values are the client's choice: bound labels and buckets


@dataclass(frozen=True)
class Tenant:
    name: str
    priority: Priority
    weight: float
    limits: RateLimitConfig


@dataclass(frozen=True)
class Identified:
    tenant: Tenant
    priority: Priority


@dataclass(frozen=True)
class Unauthorized:
    message: str


class TenantDirectory:
    """Tenants as configured (plus a hot-reloaded keys file), and the rules that name them."""

    def __init__(self, config: AdmissionConfig, keys_file: KeysFile | None = None) -> None:
        self.config = config
        self.keys_file = keys_file
        self._tenants = {
            t.name: Tenant(
                t.name,
                Priority[t.priority.upper()],
                t.weight,
                t.limits or config.default_limits,
            )
            for t in config.tenants
        }
        self._by_hash = {digest: t.name for t in config.tenants for digest in t.api_keys}
        self._defaults: dict[str, Tenant] = {}  # tenants met by header or keys file only

    @property
    def weights(self) -> dict[str, float]:
        return {name: t.weight for name, t in self._tenants.items() if t.weight != 1.0}

    def tenant(self, name: str) -> Tenant:
        known = self._tenants.get(name)
        if known is not None:
            return known
        made = self._defaults.get(name)
        if made is None:
            if len(self._defaults) >= MAX_HEADER_TENANTS:
                name = OVERFLOW
                made = self._defaults.get(name)
            if made is None:
                made = Tenant(name, Priority.STANDARD, 1.0, self.config.default_limits)
                self._defaults[name] = made
        return made

    def identify(self, headers: Mapping[str, str]) -> Identified | Unauthorized:
        """The request's tenant and class, or why it is refused."""
        cfg = self.config
        if cfg.api_keys.enabled:
            key = bearer_token(headers.get("Authorization"))
            if key is None:
                return Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
            digest = key_hash(key)
            name = self._by_hash.get(digest)
            if name is None and self.keys_file is not None:
                name = self.keys_file.hashes.get(digest)
            if name is None:
                return Unauthorized("invalid API key")
        else:
            given = headers.get(cfg.tenant_header, "").strip()
            name = given[:MAX_TENANT_NAME] if given.isprintable() and given else ANONYMOUS
        tenant = self.tenant(name)
        asked = headers.get(cfg.priority_header)
        priority = Priority.parse(asked) if asked else None
        if priority is None:  # (a class is an IntEnum: sheddable is 0, so no `or` here)
            priority = tenant.priority
        if cfg.api_keys.enabled:  # a key's owner may lower its class, never raise it
            priority = max(priority, tenant.priority)  # (lower is more urgent)
        return Identified(tenant, priority)
