"""``tailgate up``: the README's main job — local backends and the gateway in front of them.

Starts the bundled torch backend (``tiny`` preset, CPU) on ports 8001-8003 — or the fake
inference pod when torch is not installed — waits until each answers ``/ready``, then serves
the gateway on the embedded default config (``:8080``, admin ``:9901``). The last backend gets
extra latency injected so that the latency-aware balancing is visible in
``/admin/backends``. Ctrl-C (or SIGTERM) drains the gateway, then stops the backends.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx

from gateway.config import (
    ConfigError,
    GatewayConfig,
    default_config_text,
    load_config,
    parse_config,
)
from gateway.process import run_loop, settle_heap, setup_logging

log = logging.getLogger("tailgate.up")

SLOW_LATENCY = "150ms"


def _backend_command(kind: str, port: int, slow: bool) -> list[str]:
    if kind == "torch":
        cmd = [sys.executable, "-m", "backend.cli", "--preset", "tiny", "--port", str(port)]
        cmd += ["--host", "127.0.0.1"]
        if slow:
            cmd += ["--fault-latency", SLOW_LATENCY]
        return cmd
    cmd = [sys.executable, "-m", "loadtests.fakepod", "--port", str(port), "--service-ms", "30"]
    cmd += ["--name", f"backend-{port}"]
    if slow:
        cmd += ["--slow-factor", "5"]
    return cmd


def _wait_ready(urls: list[str], procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(urls)
    while pending:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a backend exited with status {proc.returncode} while starting")
        for url in list(pending):
            try:
                if httpx.get(f"{url}/ready", timeout=1.0).status_code == 200:
                    pending.discard(url)
                    log.info("backend %s is ready", url)
            except httpx.HTTPError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"backends not ready after {timeout_s:.0f}s: {sorted(pending)}")
        time.sleep(0.2)


def run_local_stack(
    backends: int, backend_kind: str, use_uvloop: bool, config_path: str | None
) -> int:
    from gateway.server import Gateway

    try:
        config: GatewayConfig = (
            load_config(config_path) if config_path else parse_config(default_config_text())
        )
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return 2
    setup_logging(config.logging.level)
    if backend_kind == "auto":
        has_torch = importlib.util.find_spec("torch") is not None
        backend_kind = "torch" if has_torch else "fake"
        if not has_torch:
            log.warning("torch is not installed: starting fake inference pods instead")
    urls = [b.url for b in config.backends][:backends]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, url in enumerate(urls):
            port = urlsplit(url).port or 80
            slow = len(urls) > 1 and i == len(urls) - 1
            cmd = _backend_command(backend_kind, port, slow)
            procs.append(subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}))
        _wait_ready(urls, procs, timeout_s=300)

        async def serve() -> None:
            gateway = Gateway(config, config_path)
            await gateway.start()
            gateway.install_signal_handlers()
            print(
                f"\ntailgate is up: http://{config.listen.host}:{gateway.public_port}  "
                f"(admin: http://{config.admin.host}:{gateway.admin_port}/admin/backends)\n"
                f"try: curl -s http://{config.listen.host}:{gateway.public_port}/v1/completions "
                "-H 'Content-Type: application/json' "
                """-d '{"prompt": "Hello", "max_tokens": 8}'\n""",
                flush=True,
            )
            settle_heap()
            await gateway.stopped.wait()

        run_loop(serve(), use_uvloop)
        return 0
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
