"""The route deadline behaves as ``asyncio.timeout`` does: TimeoutError when it passes, nothing
when the block ends first, and someone else's cancellation stays a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from gateway.deadline import Deadline


def test_a_block_that_outlives_its_deadline_raises_timeout_error() -> None:
    async def main() -> None:
        never = asyncio.Event()
        with pytest.raises(TimeoutError), Deadline(0.01):
            await never.wait()
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        await asyncio.sleep(0)  # no cancellation left pending for the next await

    asyncio.run(asyncio.wait_for(main(), 5))


def test_a_block_that_ends_in_time_is_left_alone_and_its_timer_disarmed() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with Deadline(0.01):
            await asyncio.sleep(0)
        done = loop.create_future()
        loop.call_later(0.05, done.set_result, True)
        assert await done  # past the deadline: nothing was cancelled

    asyncio.run(asyncio.wait_for(main(), 5))


def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    async def guarded(started: asyncio.Event) -> None:
        with Deadline(10.0):
            started.set()
            await asyncio.Event().wait()

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(guarded(started))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(main(), 5))
