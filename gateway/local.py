"""``tailgate up``: the README's main job — local backends and the gateway in front of them.

Starts ``N`` bundled torch backends (``tailgate-backend --preset tiny``, on CPU unless a GPU
is there) on consecutive ports, waits until each answers ``/ready``, then serves the gateway on
the embedded default config with the chosen ports. The last backend gets extra latency
injected so that the latency-aware balancing is visible in ``/admin/backends``. Ctrl-C (or
SIGTERM) drains the gateway, then stops the backends. Only ``backend/`` servers are started:
the gateway never runs its test tools.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx

from gateway.config import BackendConfig, GatewayConfig
from gateway.process import run_loop, settle_heap, setup_logging

log = logging.getLogger("tailgate.up")

SLOW_LATENCY = "150ms"
READY_TIMEOUT_S = 300.0  # a first start imports torch and warms the model; slow disks take long


def local_backends(count: int, first_port: int) -> tuple[BackendConfig, ...]:
    """``count`` backends on 127.0.0.1 at consecutive ports, named as the embedded config does."""
    return tuple(
        BackendConfig(url=f"http://127.0.0.1:{first_port + i}", name=f"backend-{i + 1}")
        for i in range(count)
    )


def local_config(
    base: GatewayConfig,
    port: int | None = None,
    admin_port: int | None = None,
    backends: int | None = None,
    backend_port: int | None = None,
) -> GatewayConfig:
    """``base`` with the ports and the number of local backends that were asked for.

    Unset choices keep ``base``'s: the embedded config's 8080, 9901 and three backends from
    8001. ``backend_port`` alone moves the backends; ``backends`` alone keeps their first port.
    """
    config = base
    if port is not None:
        config = dataclasses.replace(config, listen=dataclasses.replace(config.listen, port=port))
    if admin_port is not None:
        config = dataclasses.replace(
            config, admin=dataclasses.replace(config.admin, port=admin_port)
        )
    if backends is not None or backend_port is not None:
        first = urlsplit(base.backends[0].url).port if base.backends else None
        first_port = backend_port if backend_port is not None else first or 8001
        count = backends if backends is not None else len(base.backends)
        config = dataclasses.replace(config, backends=local_backends(count, first_port))
    return config


def _backend_command(port: int, slow: bool) -> list[str]:
    cmd = [sys.executable, "-m", "backend.cli", "--preset", "tiny", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning"]
    if slow:
        cmd += ["--fault-latency", SLOW_LATENCY]
    return cmd


def _start_backends(urls: list[str]) -> list[subprocess.Popen[bytes]]:
    """One backend per URL; their own start-up lines are dropped, warnings and errors kept."""
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for i, url in enumerate(urls):
        slow = len(urls) > 1 and i == len(urls) - 1
        cmd = _backend_command(urlsplit(url).port or 80, slow)
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
    return procs


def _wait_ready(urls: list[str], procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """Poll each backend's ``/ready`` quietly until all answer 200, or one exits, or time is up."""
    deadline = time.monotonic() + timeout_s
    pending = set(urls)
    while pending:
        for url, proc in zip(urls, procs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"backend {url} exited with status {proc.returncode}")
        for url in list(pending):
            try:
                if httpx.get(f"{url}/ready", timeout=1.0).status_code == 200:
                    pending.discard(url)
            except httpx.HTTPError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"backends not ready after {timeout_s:.0f}s: {sorted(pending)}")
        time.sleep(0.2)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _port_range(urls: list[str]) -> str:
    ports = [urlsplit(url).port for url in urls]
    return f"{ports[0]}" if len(ports) == 1 else f"{ports[0]}-{ports[-1]}"


def run_local_stack(config: GatewayConfig, config_path: str | None, use_uvloop: bool) -> int:
    """Start the local backends of ``config``, then serve the gateway until it is stopped."""
    from gateway.server import Gateway

    setup_logging(config.logging.level)
    if importlib.util.find_spec("torch") is None:
        log.error(
            "tailgate up runs the bundled torch backend: pip install 'tailgate[backend]' "
            "(or `make run`); for your own backends use `tailgate serve --config FILE`"
        )
        return 2
    urls = [backend.url for backend in config.backends]
    if not urls:
        log.error("tailgate up starts the config's static backends: list; it has none")
        return 2
    started = time.monotonic()
    log.info(
        "starting %d backends (tailgate-backend --preset tiny) on 127.0.0.1:%s",
        len(urls),
        _port_range(urls),
    )
    procs = _start_backends(urls)
    try:
        _wait_ready(urls, procs, READY_TIMEOUT_S)
        log.info("backends ready after %.1f s", time.monotonic() - started)

        async def serve() -> None:
            gateway = Gateway(config, config_path)
            await gateway.start()
            gateway.install_signal_handlers()
            public = f"http://{config.listen.host}:{gateway.public_port}"
            print(
                f"\ntailgate is up: {public}  "
                f"(admin: http://{config.admin.host}:{gateway.admin_port}/admin/backends)\n"
                f"try: curl -s {public}/v1/completions -H 'Content-Type: application/json' "
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
    except KeyboardInterrupt:  # Ctrl-C while the backends were still loading
        return 130
    finally:
        _stop(procs)
