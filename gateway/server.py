"""The gateway's lifecycle: start, serve, reload, drain, stop.

Signals only set things in motion: SIGHUP (or a change of the config file's contents) reloads;
SIGTERM/SIGINT drain — ``/readyz`` turns 503, the listener stops accepting, requests in flight
finish for up to ``drain_timeout`` — and then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.admin import build_admin_app
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.discovery import Discovery
from gateway.fleet import BackendSpec
from gateway.handler import ProxyHandler
from gateway.listener import GatewayAppRunner, GatewayServer
from gateway.maintenance import Maintenance
from gateway.metrics import GatewayMetrics
from gateway.probes import Prober
from gateway.runtime import Runtime
from gateway.upstream import UpstreamClient

log = logging.getLogger("tailgate")

CONFIG_POLL_S = 1.0


def make_listen_socket(host: str, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    """A bound, listening TCP socket; SO_REUSEPORT lets several workers share the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class Gateway:
    """One gateway process: public listener, admin listener, background tasks."""

    def __init__(
        self,
        config: GatewayConfig,
        config_path: str | Path | None = None,
        metrics: GatewayMetrics | None = None,
        render_metrics: Callable[[], bytes] | None = None,
        public_socket: socket.socket | None = None,
        serve_admin: bool = True,
    ) -> None:
        self.config = config
        self.config_path = Path(config_path) if config_path else None
        self.runtime = Runtime(config, metrics=metrics)
        self._render_metrics = render_metrics
        self._public_socket = public_socket
        self._serve_admin = serve_admin and config.admin.enabled
        self._public_runner: web.ServerRunner | None = None
        self._public_site: web.BaseSite | None = None
        self._admin_runner: GatewayAppRunner | None = None
        self._prober = Prober(self.runtime)
        self._maintenance = Maintenance(self.runtime)
        self._watch_task: asyncio.Task[None] | None = None
        self.discovery: Discovery | None = None
        self._signal_tasks: set[asyncio.Future[object]] = set()
        self._config_digest = self._digest()
        self._active_requests = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.stopped = asyncio.Event()
        self.public_port: int | None = None
        self.admin_port: int | None = None

    # -- start -------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        rt = self.runtime
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=cfg.limits.max_connections_per_backend,
            keepalive_timeout=cfg.timeouts.upstream_idle,
            ttl_dns_cache=10,
        )
        rt.upstream = UpstreamClient(
            max_per_origin=cfg.limits.max_connections_per_backend,
            idle_timeout_s=cfg.timeouts.upstream_idle,
        )
        rt.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=1 << 16,
        )
        handler = ProxyHandler(rt)

        async def counted(request: web.BaseRequest) -> web.StreamResponse:
            self._active_requests += 1
            self._idle.clear()
            try:
                return await handler(request)
            finally:
                self._active_requests -= 1
                if self._active_requests == 0:
                    self._idle.set()

        server = GatewayServer(
            counted,
            header_timeout_s=cfg.timeouts.request_header,
            handler_cancellation=True,
            keepalive_timeout=cfg.timeouts.idle,
            # after an early answer (413, 408) an unread body is drained this long, not 10 s
            lingering_time=cfg.timeouts.request_body_idle,
            max_field_size=cfg.limits.max_header_size,
            max_line_size=cfg.limits.max_header_size,
            max_headers=128,
            access_log=None,
        )
        self._public_runner = web.ServerRunner(server, handle_signals=False)
        await self._public_runner.setup()
        if self._public_socket is not None:
            self._public_site = web.SockSite(self._public_runner, self._public_socket)
        else:
            self._public_site = web.TCPSite(
                self._public_runner,
                cfg.listen.host,
                cfg.listen.port,
                backlog=cfg.listen.backlog,
                reuse_address=True,
            )
        await self._public_site.start()
        self.public_port = bound_port(self._public_runner)
        if self._serve_admin:
            app = build_admin_app(rt, cfg.admin.token, self._render_metrics)
            self._admin_runner = GatewayAppRunner(
                app,
                header_timeout_s=cfg.timeouts.request_header,
                access_log=None,
                handle_signals=False,
            )
            await self._admin_runner.setup()
            admin_site = web.TCPSite(self._admin_runner, cfg.admin.host, cfg.admin.port)
            await admin_site.start()
            self.admin_port = bound_port(self._admin_runner)
        await self._start_discovery(cfg)
        self._prober.sync()
        self._maintenance.start()
        if self.config_path is not None:
            self._watch_task = asyncio.create_task(self._watch_config(), name="config-watch")
        rt.metrics.backends.set(len(rt.fleet.endpoints))
        admin_at = f", admin {cfg.admin.host}:{self.admin_port}" if self.admin_port else ""
        log.info(
            "tailgate listening on http://%s:%s%s, %d backends, policy %s",
            cfg.listen.host,
            self.public_port,
            admin_at,
            len(rt.fleet.endpoints),
            cfg.balancer.policy,
        )

    async def _start_discovery(self, cfg: GatewayConfig) -> None:
        if cfg.discovery is None or cfg.discovery.type == "static":
            return
        self.discovery = Discovery(cfg.discovery, self._apply_discovered)
        await self.discovery.refresh_once()  # serve with the first set, not an empty fleet
        self.discovery.start()

    def _apply_discovered(self, specs: list[BackendSpec]) -> None:
        self.runtime.apply_backends(specs)
        self._prober.sync()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: self._spawn(self.drain_and_stop()))

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        """Run a signal's work as a task, holding a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._signal_tasks.add(task)
        task.add_done_callback(self._signal_tasks.discard)

    # -- reload ------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config file; apply it only if valid. Returns whether it was applied."""
        if self.config_path is None:
            return False
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.runtime.metrics.config_reloads.labels("failure").inc()
            log.error("config reload rejected; the previous config keeps serving:\n%s", exc)
            return False
        self._config_digest = self._digest()
        await self.apply(new)
        self.runtime.metrics.config_reloads.labels("success").inc()
        log.info("config reloaded from %s", self.config_path)
        return True

    async def apply(self, new: GatewayConfig) -> None:
        old = self.config
        if (old.listen, old.admin) != (new.listen, new.admin):
            log.warning("listen/admin changes take effect only after a restart")
        self.config = new
        self.runtime.reconfigure(new)
        if old.discovery != new.discovery:
            await self._restart_discovery(new)
        self._prober.sync()

    async def _restart_discovery(self, new: GatewayConfig) -> None:
        if self.discovery is not None:
            await self.discovery.stop()
            self.discovery = None
        await self._start_discovery(new)

    def _digest(self) -> str | None:
        if self.config_path is None:
            return None
        try:
            return hashlib.sha256(self.config_path.read_bytes()).hexdigest()
        except OSError:
            return None

    async def _watch_config(self) -> None:
        """Reload when the file's contents change (covers editors and ConfigMap symlink swaps)."""
        while True:
            await asyncio.sleep(CONFIG_POLL_S)
            digest = self._digest()
            if digest is not None and digest != self._config_digest:
                self._config_digest = digest
                await self.reload()

    # -- drain and stop ----------------------------------------------------------------------

    async def drain_and_stop(self) -> None:
        if self.runtime.draining:
            return
        self.runtime.draining = True
        timeout = self.config.drain_timeout
        log.info("draining: %d requests in flight, up to %.1fs", self._active_requests, timeout)
        if self._public_site is not None:
            await self._public_site.stop()  # stop accepting; open connections carry on
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        if self._active_requests:
            log.warning("drain timeout: %d requests cut off", self._active_requests)
        await self.stop()

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
        if self.discovery is not None:
            await self.discovery.stop()
        await self._prober.stop()
        await self._maintenance.stop()
        if self._public_runner is not None:
            await self._public_runner.cleanup()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if self.runtime.session is not None:
            await self.runtime.session.close()
        if self.runtime.upstream is not None:
            await self.runtime.upstream.close()
        await self.runtime.close_tracer()
        await self.runtime.cache.close()
        await self.runtime.tenant_gate.close()
        self.stopped.set()


def bound_port(runner: web.BaseRunner) -> int | None:
    """The port a runner's started site listens on (the real one when it was asked for port 0),
    read through aiohttp's public ``BaseRunner.addresses``."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None
