"""A redis-server of the test's own: a free port on 127.0.0.1, no persistence, ready when it
answers PING, stopped by its PID."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tests.helpers import free_port, wait_until_async
from tests.tools import require_tool


@asynccontextmanager
async def redis_server() -> AsyncIterator[tuple[subprocess.Popen[bytes], int]]:
    """The server process and its port, once it answers PING."""
    import redis.asyncio as redis_asyncio

    port = free_port()
    proc = subprocess.Popen(
        [
            require_tool("redis-server"),
            *("--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis_asyncio.Redis(host="127.0.0.1", port=port, socket_timeout=0.2)

    async def answers() -> bool:
        try:
            return bool(await client.ping())
        except (OSError, redis_asyncio.ConnectionError):  # still starting
            return False

    try:
        await wait_until_async(answers, timeout_s=5.0)
        yield proc, port
    finally:
        await client.aclose()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
