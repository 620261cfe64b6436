"""The tenant a request belongs to, as far as the cache is concerned.

One function, so that the cache follows whatever the gateway comes to call a tenant (an API
key, a header): point it there and every key follows. Today it is the ``X-Tenant`` header.
"""

from __future__ import annotations

from collections.abc import Mapping

TENANT_HEADER = "X-Tenant"
ANONYMOUS = ""


def tenant_of(headers: Mapping[str, str]) -> str:
    """The request's tenant; :data:`ANONYMOUS` when it names none."""
    return headers.get(TENANT_HEADER, ANONYMOUS).strip()
