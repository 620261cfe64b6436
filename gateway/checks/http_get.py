"""The plain check: ``GET health_check.path`` answers 2xx within ``health_check.timeout``."""

from __future__ import annotations

import asyncio

import aiohttp
from yarl import URL

from gateway.checks.base import PROBE_ERRORS
from gateway.config.model import HealthCheckConfig


class HttpGet:
    """Redirects are not followed: a health endpoint that redirects is misconfigured."""

    def __init__(self, path: str, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s

    async def passed(self, session: aiohttp.ClientSession, base: URL, now: float) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                async with session.get(base.with_path(self.path), allow_redirects=False) as resp:
                    await resp.read()
                    return 200 <= resp.status < 300
        except PROBE_ERRORS:
            return False


def build(config: HealthCheckConfig) -> HttpGet:
    return HttpGet(config.path, config.timeout)
