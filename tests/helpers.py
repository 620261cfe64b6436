"""Shared test plumbing: real servers on 127.0.0.1 (fake pods, the gateway), readiness waits."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.config import parse_config
from gateway.server import Gateway
from loadtests.fakepod import STATE, PodState, build_app


@dataclass
class Pod:
    name: str
    port: int
    runner: web.AppRunner
    state: PodState

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def start_pod(name: str, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> Pod:
    app = build_app(name, **kwargs)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    port = runner.addresses[0][1]
    return Pod(name, port, runner, app[STATE])


def gateway_yaml(pods: list[Pod] | list[str], extra: str = "") -> str:
    """A gateway config on ephemeral ports in front of ``pods`` (Pod objects or URLs)."""
    lines = ["listen: {host: 127.0.0.1, port: 0}", "admin: {host: 127.0.0.1, port: 0}", "backends:"]
    for pod in pods:
        if isinstance(pod, Pod):
            lines.append(f"  - {{url: '{pod.url}', name: {pod.name}}}")
        else:
            lines.append(f"  - {{url: '{pod}'}}")
    lines.append("logging: {access_log: false}")
    return "\n".join(lines) + "\n" + extra


@asynccontextmanager
async def running_gateway(yaml_text: str, config_path: Path | None = None):  # type: ignore[no-untyped-def]
    config = parse_config(yaml_text)
    gateway = Gateway(config, config_path)
    await gateway.start()
    try:
        yield gateway
    finally:
        if not gateway.stopped.is_set():
            await gateway.stop()


@asynccontextmanager
async def pods_and_gateway(n: int, extra: str = "", **pod_kwargs: Any):  # type: ignore[no-untyped-def]
    pods = [await start_pod(f"pod{i}", **pod_kwargs) for i in range(n)]
    try:
        async with running_gateway(gateway_yaml(pods, extra)) as gateway:
            yield pods, gateway
    finally:
        for pod in pods:
            await pod.runner.cleanup()


def base(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.public_port}"


def admin(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.admin_port}"


async def wait_until(
    predicate: Callable[[], bool], timeout_s: float = 10.0, step_s: float = 0.01
) -> None:
    """Poll a condition (never a fixed sleep): fail loudly if it does not hold in time."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(step_s)


async def wait_until_async(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, step_s: float = 0.01
) -> None:
    """:func:`wait_until` for a condition that needs an await to read."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(step_s)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: the sockets stay bound until all are chosen, so two calls
    cannot be handed the same port (a listen and an admin port that clash fail the config)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


async def raw_request(port: int, data: bytes, read_timeout_s: float = 5.0) -> bytes:
    """Send raw bytes, return everything the gateway answers until it closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        try:
            async with asyncio.timeout(read_timeout_s):
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                        break
        except TimeoutError:
            pass
        return b"".join(chunks)
    finally:
        writer.close()


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def json_body(raw: bytes) -> Any:
    return json.loads(raw.partition(b"\r\n\r\n")[2])


class GatewayProcess:
    """``tailgate serve`` as a real subprocess (for signals, memory and CLI behaviour)."""

    def __init__(self, yaml_text: str, extra_args: tuple[str, ...] = ()) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.config_path = Path(self.dir.name) / "gateway.yaml"
        self.config_path.write_text(yaml_text)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--config",
                str(self.config_path),
                *extra_args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            text=True,
        )

    def wait_ready(self, admin_port: int, timeout_s: float = 20.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"gateway exited: {self.proc.stdout.read() if self.proc.stdout else ''}"
                )
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{admin_port}/healthz", timeout=1).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("gateway did not become ready")

    def rss_peak_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def stop(self, timeout_s: float = 20.0) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.dir.cleanup()
        return out or ""


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.json()
