"""The admin listener (127.0.0.1 by default): metrics, backend and cache state, liveness and
readiness.

Never served on the public listener. With ``admin.token`` set, every path but ``/healthz``
needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.errors import error_response
from gateway.health.transition import CircuitState
from gateway.pending_queue import FairQueue
from gateway.runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)
METRICS_RENDER: web.AppKey[Callable[[], bytes]] = web.AppKey("metrics_render")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def backends_snapshot(runtime: Runtime) -> dict[str, object]:
    """Every backend's state, signals and score, as JSON-able data."""
    now = runtime.clock()
    groups: dict[str, object] = {}
    for group, members in runtime.fleet.groups.items():
        policy = runtime.policy_for(group)
        candidates, panic = runtime.fleet.candidates(group, now)
        prior_s = runtime.prior_latency_s(group)
        prefix_snapshot = getattr(policy, "prefix_snapshot", None)  # a policy with an index
        entries = []
        for endpoint in members:
            entry = {
                "name": endpoint.name,
                "url": str(endpoint.url),
                "weight": endpoint.weight,
                "routable": endpoint.routable(now),
                "score": policy.score(endpoint, now),
                "signals": endpoint.signals.snapshot(now, prior_s),
                "health": endpoint.health.snapshot(now),
            }
            if prefix_snapshot is not None:
                entry["prefix_index"] = prefix_snapshot(endpoint.name)
            entries.append(entry)
        groups[group] = {
            "policy": runtime.config.balancer.policy,
            "selection": runtime.config.balancer.selection,
            "panic": panic,
            "routable": len(candidates) if not panic else 0,
            "backends": entries,
        }
    return {"groups": groups, "draining": runtime.draining}


def ready(runtime: Runtime) -> tuple[bool, str]:
    if runtime.draining:
        return False, "draining"
    now = runtime.clock()
    for endpoint in runtime.fleet.endpoints.values():
        if endpoint.routable(now) and endpoint.health.state is CircuitState.CLOSED:
            return True, "ok"
    return False, "no routable backend"


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_RENDER]()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _backends(request: web.Request) -> web.Response:
    return web.json_response(backends_snapshot(request.app[RUNTIME]))


async def _cache(request: web.Request) -> web.Response:
    return web.json_response(request.app[RUNTIME].cache.snapshot())


async def _tenants(request: web.Request) -> web.Response:
    """Tenants' limits, what is left of them, and what each has queued."""
    runtime = request.app[RUNTIME]
    snapshot = runtime.tenant_gate.snapshot(runtime.clock())
    queued: dict[str, int] = {}
    for queue in runtime.capacity.group_queues().values():
        if isinstance(queue, FairQueue):
            for tenant, count in queue.queued_by_tenant().items():
                queued[tenant] = queued.get(tenant, 0) + count
    snapshot["queued"] = queued
    return web.json_response(snapshot)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
    ok, reason = ready(request.app[RUNTIME])
    return web.json_response({"ready": ok, "reason": reason}, status=200 if ok else 503)


def auth_middleware(
    token: str | None,
) -> Middleware:
    """Bearer-token check for every admin path but ``/healthz``; JSON errors for HTTP errors."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token and request.path != "/healthz":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return error_response(401, "unauthorized", "admin token required")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return error_response(
                exc.status, "not_found" if exc.status == 404 else "bad_request", exc.reason
            )

    return check


def build_admin_app(
    runtime: Runtime, token: str | None, render_metrics: Callable[[], bytes] | None = None
) -> web.Application:
    app = web.Application(middlewares=[auth_middleware(token)])
    app[RUNTIME] = runtime
    app[METRICS_RENDER] = render_metrics or (lambda: generate_latest(runtime.metrics.registry))
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/admin/backends", _backends)
    app.router.add_get("/admin/cache", _cache)
    app.router.add_get("/admin/tenants", _tenants)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app
