"""Single flight: identical concurrent requests wait for the first one's answer.

The first request for a key leads: it goes upstream and must call :meth:`SingleFlight.end`
with the answer (or None when there is none to share). The others follow: they wait, bounded by
a timeout, and get the leader's answer, or None, after which each goes on alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Flight(Generic[T]):
    done: asyncio.Future[T | None]
    waiters: int = field(default=0)


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[str, _Flight[T]] = {}

    def lead(self, key: str) -> bool:
        """True when the caller is first for ``key`` and so leads; False when one is in flight."""
        if key in self._flights:
            return False
        self._flights[key] = _Flight(asyncio.get_running_loop().create_future())
        return True

    async def follow(self, key: str, timeout_s: float) -> T | None:
        """The leader's answer; None when it had none, none is in flight, or ``timeout_s``
        passed."""
        flight = self._flights.get(key)
        if flight is None:
            return None
        flight.waiters += 1
        try:
            async with asyncio.timeout(timeout_s):
                # shielded: a follower that gives up must not cancel the others' wait
                return await asyncio.shield(flight.done)
        except TimeoutError:
            return None
        finally:
            flight.waiters -= 1

    def end(self, key: str, answer: T | None) -> None:
        """The leader is done: wake every follower with ``answer``."""
        flight = self._flights.pop(key, None)
        if flight is not None and not flight.done.done():
            flight.done.set_result(answer)

    def waiters(self, key: str) -> int:
        flight = self._flights.get(key)
        return flight.waiters if flight is not None else 0

    def __len__(self) -> int:
        return len(self._flights)
