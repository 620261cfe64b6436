"""Tenants: who a request is for, its priority class, and that tenant's rate limits.

* :mod:`~gateway.tenants.identity`: tenant and class from the API key or headers;
* :mod:`~gateway.tenants.keys`: key hashes, the hot-reloaded keys file, what goes upstream;
* :mod:`~gateway.tenants.rate_limit`: per-replica token buckets (tokens and requests a minute);
* :mod:`~gateway.tenants.shared_limit`: the same buckets in Redis, falling back to per-replica;
* :mod:`~gateway.tenants.usage`: token estimates from the body, counts from the response;
* :mod:`~gateway.tenants.gate`: the two calls the request path makes (admit, settle).

The order in which admitted requests wait for capacity is :mod:`gateway.pending_queue`'s.
"""

from gateway.tenants.gate import Admitted, Refusal, TenantGate

__all__ = ["Admitted", "Refusal", "TenantGate"]
