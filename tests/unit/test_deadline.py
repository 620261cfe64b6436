"""The route deadline behaves as ``asyncio.timeout`` does: TimeoutError when it passes, nothing
when the block ends first, and someone else's cancellation stays a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from gateway.deadline import Deadlines, SlotTimers


def test_a_block_that_outlives_its_deadline_raises_timeout_error() -> None:
    async def main() -> None:
        never = asyncio.Event()
        with pytest.raises(TimeoutError), Deadlines(SlotTimers()).after(0.01):
            await never.wait()
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        await asyncio.sleep(0)  # no cancellation left pending for the next await

    asyncio.run(asyncio.wait_for(main(), 5))


def test_a_block_that_ends_in_time_is_left_alone() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(SlotTimers())
        with deadlines.after(0.01):
            await asyncio.sleep(0)
        done = loop.create_future()
        loop.call_later(0.05, done.set_result, True)
        assert await done  # past the deadline: nothing was cancelled

    asyncio.run(asyncio.wait_for(main(), 5))


def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    async def guarded(started: asyncio.Event) -> None:
        with Deadlines(SlotTimers()).after(10.0):
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


def test_deadlines_in_one_slot_share_its_timer_and_each_fires() -> None:
    async def waits(deadlines: Deadlines) -> str:
        try:
            with deadlines.after(0.01):
                await asyncio.Event().wait()
        except TimeoutError:
            return "timed out"
        return "ended"

    async def main() -> list[str]:
        deadlines = Deadlines(
            SlotTimers(resolution_s=1.0)
        )  # every deadline below lands in one slot
        return list(await asyncio.gather(*(waits(deadlines) for _ in range(5))))

    assert asyncio.run(asyncio.wait_for(main(), 5)) == ["timed out"] * 5


def test_slot_timers_never_fire_early_and_never_once_cancelled() -> None:
    async def main() -> tuple[list[str], float]:
        loop = asyncio.get_running_loop()
        timers = SlotTimers(resolution_s=0.05)
        fired: list[str] = []
        done: asyncio.Future[float] = loop.create_future()
        when = loop.time() + 0.01
        timers.call_at(when, lambda: fired.append("kept"))
        timers.call_at(when, lambda: fired.append("cancelled")).cancel()
        timers.call_at(when, lambda: done.set_result(loop.time()))
        return fired, await done - when

    fired, late_s = asyncio.run(asyncio.wait_for(main(), 5))
    assert fired == ["kept"]
    assert late_s >= 0.0
