"""Multi-worker mode: N gateway processes share the public port; a master supervises them.

One Python process proxies on one core. With ``tailgate serve --workers N`` each worker is a
whole :class:`~gateway.server.Gateway` (its own fleet, signals and health, so it balances on
what it observes itself) listening on its own ``SO_REUSEPORT`` socket: the kernel spreads new
connections across the workers, and a worker that stops accepting never blocks the others.

The master proxies nothing. It

- reserves the public port (bound, never listening) so port 0 resolves once and a port in use
  fails before any worker starts;
- starts each worker as a fresh interpreter (``python -m gateway.workers``) whose environment
  names a private, temporary ``PROMETHEUS_MULTIPROC_DIR``, so prometheus-client runs in
  multiprocess mode from its first import; a worker reports its pid and its private admin port
  (127.0.0.1, ephemeral, guarded by a per-run secret token) on a pipe once it is listening.
  The worker gets its config from the master (pickled on stdin): the last valid one, so a
  worker restarted while the file holds a broken edit serves what its siblings serve;
- serves the admin listener only after every worker listens: ``/metrics`` aggregated over all
  workers, live and dead (counters survive restarts), ``/readyz`` (ready while one worker is),
  ``/admin/backends`` (each worker's snapshot, fetched from its private listener), ``/healthz``;
- forwards SIGHUP (reload) to every worker; on SIGTERM/SIGINT forwards SIGTERM, waits for the
  workers to drain, removes the metrics directory and exits 0;
- replaces a worker that dies unexpectedly, after a short backoff. A crash loop
  (:class:`RestartPolicy`) stops the master with exit status 1 instead: flapping forever would
  hide a broken host or release from the supervisor (systemd, Kubernetes) that should see it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import pickle
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from gateway.admin import auth_middleware, build_admin_app
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.process import run_loop, setup_logging
from gateway.server import Gateway, bound_port, make_listen_socket

log = logging.getLogger("tailgate.workers")

WORKER_TOKEN_ENV = "TAILGATE_WORKER_ADMIN_TOKEN"
START_TIMEOUT_S = 30.0  # a worker imports, binds and reports within this, or startup fails
STOP_GRACE_S = 5.0  # beyond drain_timeout, before a worker that ignores SIGTERM is killed
WORKER_QUERY_TIMEOUT_S = 2.0  # master -> worker private admin requests
PARENT_POLL_S = 1.0  # how often a worker checks that its master is still alive


@dataclasses.dataclass
class RestartPolicy:
    """Bounded restarts with backoff, shared by all workers; pure (``now`` is passed in).

    A crash now and then (an OOM kill, a bug on one rare request) costs 1/N of capacity for
    ``delay`` seconds. ``max_restarts`` crashes within ``window_s`` is a crash loop: give up.
    """

    max_restarts: int = 5
    window_s: float = 60.0
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0
    _crashes: collections.deque[float] = dataclasses.field(default_factory=collections.deque)

    def on_crash(self, now: float) -> float | None:
        """Seconds to wait before the restart, or None when the crash loop limit is reached."""
        while self._crashes and now - self._crashes[0] > self.window_s:
            self._crashes.popleft()
        self._crashes.append(now)
        if len(self._crashes) > self.max_restarts:
            return None
        return min(self.max_delay_s, self.base_delay_s * 2 ** (len(self._crashes) - 1))


@dataclasses.dataclass
class Worker:
    slot: int
    proc: subprocess.Popen[bytes]
    admin_port: int
    exited: asyncio.Future[int]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)


class WorkerStartError(RuntimeError):
    pass


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (never listen) ``host:port`` with SO_REUSEPORT: holds the port for the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def render_metrics(metrics_dir: Path) -> bytes:
    """Every worker's metrics, summed (or per the gauges' ``multiprocess_mode``)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    return generate_latest(registry)


class Master:
    """Starts, supervises, signals and stops the workers; serves the aggregated admin API."""

    def __init__(
        self,
        config: GatewayConfig,
        config_path: str | None,
        workers: int,
        use_uvloop: bool,
        metrics_dir: Path,
        restarts: RestartPolicy | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.count = workers
        self.use_uvloop = use_uvloop
        self.metrics_dir = metrics_dir
        self.restarts = restarts or RestartPolicy()
        self.workers: dict[int, Worker] = {}
        self.stopping = False
        self.exit_code = 0
        self.port = 0
        self._token = secrets.token_urlsafe(24)
        self._done = asyncio.Event()
        self._waiters = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="worker-wait")
        self._tasks: set[asyncio.Task[None]] = set()
        self.session: aiohttp.ClientSession | None = None
        self.admin_port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> int:
        listen = self.config.listen
        try:
            reservation = reserve_port(listen.host, listen.port)
        except OSError as exc:
            log.error("cannot bind %s:%s: %s", listen.host, listen.port, exc)
            return 1
        self.port = int(reservation.getsockname()[1])
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=WORKER_QUERY_TIMEOUT_S),
            headers={"Authorization": f"Bearer {self._token}"},
        )
        admin_runner: web.AppRunner | None = None
        try:
            started = await asyncio.gather(
                *(self._spawn(slot) for slot in range(self.count)), return_exceptions=True
            )
            for result in started:
                if isinstance(result, Worker):
                    self._supervise(result)
            failures = [r for r in started if isinstance(r, BaseException)]
            if failures:
                log.error("workers failed to start: %s", "; ".join(map(str, failures)))
                return 1
            admin_runner = await self._start_admin()
            log.info(
                "tailgate master pid %d: %d workers on http://%s:%d, admin %s",
                os.getpid(),
                self.count,
                listen.host,
                self.port,
                f"{self.config.admin.host}:{self.admin_port}" if admin_runner else "disabled",
            )
            await self._done.wait()
            return self.exit_code
        finally:
            self.stopping = True
            await self._stop_workers()
            if admin_runner is not None:
                await admin_runner.cleanup()
            await self.session.close()
            reservation.close()
            self._waiters.shutdown(wait=False)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._forward_reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.shutdown, sig)

    def _forward_reload(self) -> None:
        self._refresh_config()
        log.info("SIGHUP: reloading %d workers", len(self.workers))
        for worker in self.workers.values():
            worker.signal(signal.SIGHUP)

    def shutdown(self, sig: signal.Signals = signal.SIGTERM, exit_code: int = 0) -> None:
        """Begin draining every worker; :meth:`run` returns once they have exited."""
        if self.stopping:
            return
        log.info("%s: draining %d workers", sig.name, len(self.workers))
        self.stopping = True
        self.exit_code = exit_code
        self._refresh_config()  # the workers drain for the file's current drain_timeout
        for worker in self.workers.values():
            worker.signal(signal.SIGTERM)
        self._done.set()

    async def _stop_workers(self) -> None:
        for worker in self.workers.values():
            worker.signal(signal.SIGTERM)
        pending = [w.exited for w in self.workers.values()]
        if pending:
            timeout_s = self.config.drain_timeout + STOP_GRACE_S
            _, late = await asyncio.wait(pending, timeout=timeout_s)
            for worker in list(self.workers.values()):
                if worker.exited in late:
                    log.error("worker pid %d did not drain in time; killing it", worker.pid)
                    worker.signal(signal.SIGKILL)
            await asyncio.gather(*pending)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _refresh_config(self) -> bool:
        """Adopt the config file's contents if valid (as the workers do); whether they were."""
        if self.config_path is None:
            return True
        try:
            self.config = load_config(self.config_path)
        except (ConfigError, OSError):
            return False
        return True

    # -- workers -----------------------------------------------------------------------------

    def _worker_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        env[WORKER_TOKEN_ENV] = self._token
        return env

    async def _spawn(self, slot: int) -> Worker:
        """Start one worker and wait for its report: it listens once this returns."""
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        argv = [sys.executable, "-m", "gateway.workers", "--slot", str(slot)]
        argv += ["--host", self.config.listen.host, "--port", str(self.port)]
        argv += ["--status-fd", str(write_fd)]
        argv += ["--config", self.config_path] if self.config_path else []
        argv += [] if self.use_uvloop else ["--no-uvloop"]
        env = self._worker_env()
        try:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, pass_fds=(write_fd,))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError), proc.stdin:  # it died at once: EOF below
            proc.stdin.write(pickle.dumps(self.config))
        exited = loop.run_in_executor(self._waiters, proc.wait)
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                line = await reader.readline()
        except TimeoutError:
            line = b""
        finally:
            transport.close()
        if not line:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            rc = await exited
            self._mark_dead(proc.pid)
            raise WorkerStartError(f"worker {slot} (pid {proc.pid}) did not start (exit {rc})")
        report = json.loads(line)
        worker = Worker(slot, proc, int(report["admin_port"]), exited)
        self.workers[slot] = worker
        log.info("worker %d started: pid %d", slot, proc.pid)
        if self.stopping:  # shutdown began while it started: it drains with the others
            worker.signal(signal.SIGTERM)
        return worker

    def _supervise(self, worker: Worker) -> None:
        task = asyncio.create_task(self._watch(worker), name=f"worker-{worker.slot}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, worker: Worker) -> None:
        """Wait for ``worker`` to exit; replace it unless the master is stopping."""
        while True:
            rc = await worker.exited
            self.workers.pop(worker.slot, None)
            self._mark_dead(worker.pid)
            if self.stopping:
                log.info("worker %d (pid %d) exited: %s", worker.slot, worker.pid, _describe(rc))
                return
            log.error(
                "worker %d (pid %d) died unexpectedly: %s",
                worker.slot,
                worker.pid,
                _describe(rc),
            )
            replacement = await self._restart(worker.slot)
            if replacement is None:
                return
            worker = replacement

    async def _restart(self, slot: int) -> Worker | None:
        while not self.stopping:
            delay_s = self.restarts.on_crash(time.monotonic())
            if delay_s is None:
                log.error(
                    "workers crashed %d times within %.0fs: stopping the gateway",
                    self.restarts.max_restarts + 1,
                    self.restarts.window_s,
                )
                self.shutdown(exit_code=1)
                return None
            await asyncio.sleep(delay_s)
            if self.stopping:
                return None
            if not self._refresh_config():
                log.warning("config file invalid: worker %d starts with the last valid one", slot)
            try:
                return await self._spawn(slot)
            except (WorkerStartError, OSError) as exc:
                log.error("restarting worker %d failed: %s", slot, exc)
        return None

    def _mark_dead(self, pid: int) -> None:
        """Drop a dead worker's live gauges; its counters and histograms stay in the totals."""
        mark_process_dead(pid, str(self.metrics_dir))

    async def _ask(self, worker: Worker, path: str) -> tuple[int, Any]:
        """GET ``path`` from a worker's private admin listener: (status, JSON body)."""
        url = f"http://127.0.0.1:{worker.admin_port}{path}"
        assert self.session is not None
        async with self.session.get(url) as resp:
            return resp.status, await resp.json()

    async def _ask_all(self, path: str) -> list[tuple[Worker, tuple[int, Any] | BaseException]]:
        workers = sorted(self.workers.values(), key=lambda w: w.slot)
        answers = await asyncio.gather(
            *(self._ask(w, path) for w in workers), return_exceptions=True
        )
        return list(zip(workers, answers, strict=True))

    # -- admin -------------------------------------------------------------------------------

    async def _start_admin(self) -> web.AppRunner | None:
        admin = self.config.admin
        if not admin.enabled:
            return None
        app = web.Application(middlewares=[auth_middleware(admin.token)])
        routes: dict[str, Callable[[web.Request], Awaitable[web.Response]]] = {
            "/metrics": self._metrics,
            "/admin/backends": self._backends,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
        }
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, admin.host, admin.port)
        await site.start()
        self.admin_port = bound_port(site) or admin.port
        return runner

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(render_metrics, self.metrics_dir)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _backends(self, request: web.Request) -> web.Response:
        entries: list[dict[str, Any]] = []
        for worker, answer in await self._ask_all("/admin/backends"):
            entry: dict[str, Any] = {"slot": worker.slot, "pid": worker.pid}
            if isinstance(answer, BaseException):
                entry["error"] = repr(answer)
            else:
                entry.update(answer[1])
            entries.append(entry)
        return web.json_response({"workers": entries, "draining": self.stopping})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "workers": len(self.workers)})

    async def _readyz(self, request: web.Request) -> web.Response:
        answers = [] if self.stopping else await self._ask_all("/readyz")
        ready = sum(1 for _, a in answers if not isinstance(a, BaseException) and a[0] == 200)
        reason = "draining" if self.stopping else ("ok" if ready else "no ready worker")
        body = {"ready": ready > 0, "reason": reason, "workers_ready": ready}
        body["workers"] = len(self.workers)
        return web.json_response(body, status=200 if ready else 503)


def _describe(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


def serve_workers(
    config: GatewayConfig, config_path: str | None, workers: int, use_uvloop: bool
) -> int:
    """Run ``workers`` gateway processes behind one master until SIGTERM; the exit status."""
    with tempfile.TemporaryDirectory(prefix="tailgate-metrics-") as metrics_dir:
        master = Master(config, config_path, workers, use_uvloop, Path(metrics_dir))

        async def main() -> int:
            master.install_signal_handlers()
            return await master.run()

        return run_loop(main(), use_uvloop)


# -- the worker process ------------------------------------------------------------------------


async def _serve_worker(args: argparse.Namespace, config: GatewayConfig) -> None:
    """One worker: a Gateway on its own SO_REUSEPORT socket plus a private admin listener."""
    sock = make_listen_socket(args.host, args.port, config.listen.backlog, reuse_port=True)
    gateway = Gateway(config, args.config, public_socket=sock, serve_admin=False)
    await gateway.start()
    app = build_admin_app(gateway.runtime, os.environ.get(WORKER_TOKEN_ENV) or None)
    admin = web.AppRunner(app, access_log=None, handle_signals=False)
    await admin.setup()
    site = web.TCPSite(admin, "127.0.0.1", 0)
    await site.start()
    gateway.install_signal_handlers()
    admin_port = bound_port(site)
    report = json.dumps({"pid": os.getpid(), "admin_port": admin_port}) + "\n"
    with os.fdopen(args.status_fd, "wb") as status:
        status.write(report.encode())
    orphan_watch = asyncio.create_task(_drain_if_orphaned(gateway.drain_and_stop))
    await gateway.stopped.wait()
    orphan_watch.cancel()
    await admin.cleanup()


async def _drain_if_orphaned(drain: Callable[[], Awaitable[None]]) -> None:
    """A master killed with SIGKILL cannot stop its workers: they notice and drain."""
    master = os.getppid()
    while os.getppid() == master:
        await asyncio.sleep(PARENT_POLL_S)
    log.error("master process %d is gone: draining", master)
    await drain()


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one tailgate worker (started by the master)")
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--config", help="the file to reload from (initial config: stdin)")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    config: GatewayConfig = pickle.load(sys.stdin.buffer)  # the master's, same code: trusted
    setup_logging(config.logging.level, tag=f"[worker {args.slot} %(process)d]")

    async def main() -> int:
        await _serve_worker(args, config)
        return 0

    return run_loop(main(), use_uvloop=not args.no_uvloop)


if __name__ == "__main__":
    sys.exit(worker_main())
