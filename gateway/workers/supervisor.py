"""The master of multi-worker mode: starts, supervises, signals and stops the workers.

It proxies nothing; see :mod:`gateway.workers` for the whole design.
"""

from __future__ import annotations

import asyncio
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.multiprocess import mark_process_dead

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.process import run_loop
from gateway.workers.master_admin import MasterAdmin
from gateway.workers.restarts import RestartPolicy
from gateway.workers.worker import WORKER_TOKEN_ENV

log = logging.getLogger("tailgate.workers")

START_TIMEOUT_S = 30.0  # a worker imports, binds and reports within this, or startup fails
STOP_GRACE_S = 5.0  # beyond drain_timeout, before a worker that ignores SIGTERM is killed
WORKER_QUERY_TIMEOUT_S = 2.0  # master -> worker private admin requests


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
        admin_runner: web.BaseRunner | None = None
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
            admin = await MasterAdmin(self).start()
            if admin is not None:
                admin_runner, self.admin_port = admin
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

    async def ask_all(self, path: str) -> list[tuple[Worker, tuple[int, Any] | BaseException]]:
        workers = sorted(self.workers.values(), key=lambda w: w.slot)
        answers = await asyncio.gather(
            *(self._ask(w, path) for w in workers), return_exceptions=True
        )
        return list(zip(workers, answers, strict=True))


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
