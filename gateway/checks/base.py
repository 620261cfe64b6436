"""What every active health check is: one probe of one backend that passes or fails."""

from __future__ import annotations

from typing import Protocol

import aiohttp
from yarl import URL

# What a probe that cannot connect, is reset or runs out of time raises: a failed check.
PROBE_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


class ActiveCheck(Protocol):
    """One kind of probe, built per backend from ``health_check:`` by its registry entry (so
    it may keep per-backend state, such as when it last ran)."""

    async def passed(self, session: aiohttp.ClientSession, base: URL, now: float) -> bool:
        """Probe the backend at ``base`` (``now``: monotonic seconds); True if it passes."""
        ...
