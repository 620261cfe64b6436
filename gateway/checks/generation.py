"""The one-token generation check (``health_check.generation_interval``): an inference server's
health endpoint can answer 200 while its engine is wedged; a completion of one token cannot.

It runs at most once per ``generation_interval`` (a generation costs the backend real work),
and its last result holds until the next one: a failed generation fails every check until a
generation passes again.
"""

from __future__ import annotations

import asyncio
import math

import aiohttp
from yarl import URL

from gateway.checks.base import PROBE_ERRORS
from gateway.config.model import HealthCheckConfig


class Generation:
    """``{"prompt": "Hi", "max_tokens": 1, "temperature": 0}`` (plus ``generation_model``)
    to ``generation_path``: passes on a 200 within ``generation_timeout`` only."""

    def __init__(self, interval_s: float, path: str, model: str | None, timeout_s: float) -> None:
        self.interval_s = interval_s
        self.path = path
        self.model = model
        self.timeout_s = timeout_s
        self._due_at = -math.inf
        self._last = True

    async def passed(self, session: aiohttp.ClientSession, base: URL, now: float) -> bool:
        if now >= self._due_at:
            self._due_at = now + self.interval_s
            self._last = await self._generate(session, base)
        return self._last

    async def _generate(self, session: aiohttp.ClientSession, base: URL) -> bool:
        request: dict[str, object] = {"prompt": "Hi", "max_tokens": 1, "temperature": 0}
        if self.model is not None:
            request["model"] = self.model
        try:
            async with asyncio.timeout(self.timeout_s):
                url = base.with_path(self.path)
                async with session.post(url, json=request, allow_redirects=False) as resp:
                    await resp.read()
                    return resp.status == 200
        except PROBE_ERRORS:
            return False


def build(config: HealthCheckConfig) -> Generation | None:
    if config.generation_interval is None:
        return None
    return Generation(
        config.generation_interval,
        config.generation_path,
        config.generation_model,
        config.generation_timeout,
    )
