"""One worker process: a whole Gateway on a shared ``SO_REUSEPORT`` port, run by the master.

The master starts it as ``python -m gateway.workers`` with the config pickled on stdin; it
reports its pid and private admin port on a pipe once it listens, serves until SIGTERM, and
drains on its own if the master disappears.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pickle
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.admin import build_admin_app
from gateway.config import GatewayConfig
from gateway.listener import GatewayAppRunner
from gateway.process import run_loop, settle_heap, setup_logging
from gateway.server import Gateway, bound_port, make_listen_socket

log = logging.getLogger("tailgate.workers")

WORKER_TOKEN_ENV = "TAILGATE_WORKER_ADMIN_TOKEN"
PARENT_POLL_S = 1.0  # how often a worker checks that its master is still alive


async def serve_worker(args: argparse.Namespace, config: GatewayConfig) -> None:
    """One worker: a Gateway on its own SO_REUSEPORT socket plus a private admin listener."""
    sock = make_listen_socket(args.host, args.port, config.listen.backlog, reuse_port=True)
    gateway = Gateway(config, args.config, public_socket=sock, serve_admin=False)
    await gateway.start()
    app = build_admin_app(gateway.runtime, os.environ.get(WORKER_TOKEN_ENV) or None)
    admin = GatewayAppRunner(
        app,
        header_timeout_s=config.timeouts.request_header,
        access_log=None,
        handle_signals=False,
    )
    await admin.setup()
    site = web.TCPSite(admin, "127.0.0.1", 0)
    await site.start()
    gateway.install_signal_handlers()
    admin_port = bound_port(admin)
    report = json.dumps({"pid": os.getpid(), "admin_port": admin_port}) + "\n"
    with os.fdopen(args.status_fd, "wb") as status:
        status.write(report.encode())
    settle_heap()
    orphan_watch = asyncio.create_task(drain_if_orphaned(gateway.drain_and_stop))
    await gateway.stopped.wait()
    orphan_watch.cancel()
    await admin.cleanup()


async def drain_if_orphaned(drain: Callable[[], Awaitable[None]]) -> None:
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
        await serve_worker(args, config)
        return 0

    return run_loop(main(), use_uvloop=not args.no_uvloop)
