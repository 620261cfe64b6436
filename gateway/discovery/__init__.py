"""Discovery: where the backend set comes from, and how it changes while the gateway runs.

``static`` is the config's own ``backends:`` list (changes arrive by config reload); every
other ``discovery.type`` is a source in :data:`SOURCES`, one module each (``file``, ``dns``).
A new source is one module with a class that has ``async look()`` plus one entry here.
:class:`Discovery` runs the configured one in the background and hands each new set to the
runtime, which keeps the state of backends that stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gateway.config.model import DiscoveryConfig
from gateway.discovery.dns import DnsSource, resolve
from gateway.discovery.file import FileSource, parse_backend_file
from gateway.discovery.source import DiscoveryError, Source
from gateway.fleet import BackendSpec

log = logging.getLogger("tailgate.discovery")

SOURCES: dict[str, Callable[[DiscoveryConfig], Source]] = {
    "file": FileSource,
    "dns": DnsSource,
}


class Discovery:
    """Runs one discovery source in the background and applies every new backend set."""

    def __init__(self, config: DiscoveryConfig, apply: Callable[[list[BackendSpec]], None]) -> None:
        self.config = config
        self._apply = apply
        self._source = SOURCES[config.type](config)
        self._task: asyncio.Task[None] | None = None
        self._last: list[BackendSpec] | None = None
        self.refreshed = asyncio.Event()  # set after each look (tests wait on it)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"discovery:{self.config.type}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh_once(self) -> None:
        specs = await self._source.look()
        if specs is not None and specs != self._last:
            self._last = specs
            self._apply(specs)
        self.refreshed.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh_once()
            except Exception:  # a bug must not end discovery for good
                log.exception("discovery refresh failed")
            await asyncio.sleep(self.config.refresh)


__all__ = ["SOURCES", "Discovery", "DiscoveryError", "Source", "parse_backend_file", "resolve"]
