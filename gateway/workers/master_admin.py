"""The master's admin listener: what an operator sees of all the workers as one gateway.

``/metrics`` is aggregated over every worker, live and dead (prometheus-client's multiprocess
files; counters survive restarts); ``/readyz`` is ready while one worker is; ``/admin/backends``
gathers each worker's snapshot from its private listener; ``/healthz`` says the master lives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.admin import auth_middleware
from gateway.listener import GatewayAppRunner
from gateway.server import bound_port

if TYPE_CHECKING:
    from gateway.workers.supervisor import Master


def render_metrics(metrics_dir: Path) -> bytes:
    """Every worker's metrics, summed (or per the gauges' ``multiprocess_mode``)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    return generate_latest(registry)


class MasterAdmin:
    """The admin routes, answered from the master's view of its workers."""

    def __init__(self, master: Master) -> None:
        self.master = master

    async def start(self) -> tuple[GatewayAppRunner, int] | None:
        """Listen on the configured admin address: the runner and the bound port (or None
        when the admin listener is disabled)."""
        admin = self.master.config.admin
        if not admin.enabled:
            return None
        app = web.Application(middlewares=[auth_middleware(admin.token)])
        routes: dict[str, Callable[[web.Request], Awaitable[web.Response]]] = {
            "/metrics": self.metrics,
            "/admin/backends": self.backends,
            "/admin/cache": self.cache,
            "/healthz": self.healthz,
            "/readyz": self.readyz,
        }
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        runner = GatewayAppRunner(  # JSON protocol errors, no tracebacks, header deadline
            app,
            header_timeout_s=self.master.config.timeouts.request_header,
            access_log=None,
            handle_signals=False,
        )
        await runner.setup()
        site = web.TCPSite(runner, admin.host, admin.port)
        await site.start()
        return runner, bound_port(runner) or admin.port

    async def metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(render_metrics, self.master.metrics_dir)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def backends(self, request: web.Request) -> web.Response:
        entries = await self._per_worker("/admin/backends")
        return web.json_response({"workers": entries, "draining": self.master.stopping})

    async def cache(self, request: web.Request) -> web.Response:
        """Each worker keeps its own in-process cache (Redis, when set, is what they share)."""
        return web.json_response({"workers": await self._per_worker("/admin/cache")})

    async def _per_worker(self, path: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for worker, answer in await self.master.ask_all(path):
            entry: dict[str, Any] = {"slot": worker.slot, "pid": worker.pid}
            if isinstance(answer, BaseException):
                entry["error"] = repr(answer)
            else:
                entry.update(answer[1])
            entries.append(entry)
        return entries

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "workers": len(self.master.workers)})

    async def readyz(self, request: web.Request) -> web.Response:
        master = self.master
        answers = [] if master.stopping else await master.ask_all("/readyz")
        ready = sum(1 for _, a in answers if not isinstance(a, BaseException) and a[0] == 200)
        reason = "draining" if master.stopping else ("ok" if ready else "no ready worker")
        body = {"ready": ready > 0, "reason": reason, "workers_ready": ready}
        body["workers"] = len(master.workers)
        return web.json_response(body, status=200 if ready else 503)
