"""Deadlines of the request path on a handful of shared loop timers.

Every request has a route deadline and every try a deadline for its response head, and
almost none of them fire. ``asyncio.timeout`` or ``loop.call_at`` arm one loop timer each (on
uvloop a libuv timer made, started, stopped and closed); entering and leaving
``asyncio.timeout`` took 22-32 us on the shared 2-core benchmark machine. Here timers share
slots: each falls into a slot of ``resolution_s`` and one loop timer per slot fires all of
its members, so arming and cancelling is a set insert and a set discard (5-8 us for a whole
:class:`Deadline`), and at most ``1 / resolution_s`` loop timers a second are armed whatever
the request rate. A timer fires up to ``resolution_s`` late, never early.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from types import TracebackType

# Route and head timeouts are seconds long; firing up to 20 ms late changes nothing a client
# sees.
RESOLUTION_S = 0.02


class SlotTimers:
    """Timers of one event loop, fired a slot at a time (see the module docstring)."""

    def __init__(self, resolution_s: float = RESOLUTION_S) -> None:
        self._resolution_s = resolution_s
        self._slots: dict[int, set[SlotTimer]] = {}

    def call_at(self, when: float, callback: Callable[[], object]) -> SlotTimer:
        """Call ``callback`` once the loop's clock passes ``when`` (seconds, loop time)."""
        slot = math.ceil(when / self._resolution_s)
        members = self._slots.get(slot)
        if members is None:
            members = self._slots[slot] = set()
            asyncio.get_running_loop().call_at(slot * self._resolution_s, self._fire, slot)
        timer = SlotTimer(callback, members)
        members.add(timer)
        return timer

    def _fire(self, slot: int) -> None:
        members = self._slots.pop(slot, set())
        for timer in list(members):
            if timer in members:  # not cancelled by an earlier callback of this slot
                members.discard(timer)
                timer.callback()


class SlotTimer:
    """One armed timer; :meth:`cancel` disarms it (at any time, any number of times)."""

    __slots__ = ("_members", "callback")

    def __init__(self, callback: Callable[[], object], members: set[SlotTimer]) -> None:
        self.callback = callback
        self._members = members

    def cancel(self) -> None:
        self._members.discard(self)


class Deadlines:
    """Deadlines for tasks, on :class:`SlotTimers`."""

    def __init__(self, timers: SlotTimers) -> None:
        self._timers = timers

    def after(self, timeout_s: float) -> Deadline:
        """A deadline ``timeout_s`` from now for the running task (``with deadlines.after(t):``
        raises TimeoutError when it passes inside the block, as ``asyncio.timeout`` does)."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline needs a running task")
        deadline = Deadline(task)
        when = asyncio.get_running_loop().time() + timeout_s
        deadline.timer = self._timers.call_at(when, deadline.expire)
        return deadline


class Deadline:
    """One task's deadline; a context manager, see :meth:`Deadlines.after`."""

    __slots__ = ("_cancelling", "_expired", "_task", "timer")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self._task = task
        self._expired = False
        self._cancelling = task.cancelling()
        self.timer: SlotTimer | None = None

    def expire(self) -> None:
        self._expired = True
        self._task.cancel()

    def __enter__(self) -> Deadline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.timer is not None:
            self.timer.cancel()
        # once expired, our own cancellation is taken back whatever ended the block
        if (
            self._expired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc
