"""Scrape the real ``/metrics`` pages: an in-process gateway and a ``tailgate-backend``
subprocess, both on 127.0.0.1 with ports the OS picks."""

from __future__ import annotations

import asyncio
import re
import selectors
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

from gateway.config import parse_config
from gateway.server import Gateway

# Nothing listens on the discard port: the gateway starts with one unroutable backend, which is
# all that is needed for it to declare every family.
GATEWAY_CONFIG = """
listen: {host: 127.0.0.1, port: 0}
admin: {host: 127.0.0.1, port: 0}
backends: [{url: "http://127.0.0.1:9", name: unreachable}]
logging: {access_log: false}
"""
READY_LINE = re.compile(r"ready on http://[^\s:]+:(\d+)")
BACKEND_START_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 5.0


async def _scrape_gateway() -> str:
    gateway = Gateway(parse_config(GATEWAY_CONFIG))
    await gateway.start()
    try:
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            url = f"http://127.0.0.1:{gateway.admin_port}/metrics"
            async with session.get(url) as response:
                response.raise_for_status()
                return await response.text()
    finally:
        await gateway.stop()


def gateway_metrics_page() -> str:
    return asyncio.run(_scrape_gateway())


def _backend_command() -> list[str]:
    script = Path(sys.executable).with_name("tailgate-backend")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "backend.cli"]


def _wait_for_port(process: subprocess.Popen[str], timeout_s: float) -> int:
    """Read the backend's stdout until it says it is ready; its port is in that line."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (left_s := deadline - time.monotonic()) > 0:
            if not selector.select(left_s):
                break
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"tailgate-backend exited with {process.wait()} before ready")
            if match := READY_LINE.search(line):
                return int(match.group(1))
    raise TimeoutError(f"tailgate-backend not ready within {timeout_s:.0f}s")


def backend_metrics_page() -> str:
    command = [*_backend_command(), "--preset", "tiny", "--device", "cpu", "--port", "0"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
    )
    try:
        port = _wait_for_port(process, BACKEND_START_TIMEOUT_S)
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            return response.read().decode()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
