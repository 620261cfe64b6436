"""What every discovery source is: something that looks up the current backend set.

A source answers one :meth:`Source.look` at a time with a complete backend set, or None when
the look told nothing (a failed lookup, an unchanged file): the last set keeps serving.
"""

from __future__ import annotations

from typing import Protocol

from gateway.fleet import BackendSpec


class DiscoveryError(Exception):
    """A lookup failed in a way that says nothing about the backend set: keep the last one."""


class Source(Protocol):
    """One way of finding backends; built from ``discovery:`` by its registry entry."""

    async def look(self) -> list[BackendSpec] | None:
        """The backend set now, or None to keep the last one."""
        ...
