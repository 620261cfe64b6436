"""Single flight: followers get the leader's answer, or None and go on alone."""

from __future__ import annotations

import asyncio

import pytest

from gateway.cache.coalesce import SingleFlight
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(10)


async def test_followers_get_the_leaders_answer() -> None:
    flights: SingleFlight[str] = SingleFlight()
    assert flights.lead("k")
    assert not flights.lead("k")
    followers = [asyncio.create_task(flights.follow("k", 5.0)) for _ in range(3)]
    await wait_until(lambda: flights.waiters("k") == 3)
    flights.end("k", "answer")
    assert await asyncio.gather(*followers) == ["answer"] * 3
    assert len(flights) == 0 and flights.lead("k")  # the next request leads a new flight


async def test_a_leader_without_an_answer_sends_followers_on_alone() -> None:
    flights: SingleFlight[str] = SingleFlight()
    flights.lead("k")
    follower = asyncio.create_task(flights.follow("k", 5.0))
    await wait_until(lambda: flights.waiters("k") == 1)
    flights.end("k", None)
    assert await follower is None


async def test_a_follower_stops_waiting_at_its_timeout() -> None:
    flights: SingleFlight[str] = SingleFlight()
    flights.lead("k")
    assert await flights.follow("k", 0.01) is None
    assert flights.waiters("k") == 0


async def test_a_cancelled_follower_leaves_the_others_waiting() -> None:
    flights: SingleFlight[str] = SingleFlight()
    flights.lead("k")
    quitter = asyncio.create_task(flights.follow("k", 5.0))
    stayer = asyncio.create_task(flights.follow("k", 5.0))
    await wait_until(lambda: flights.waiters("k") == 2)
    quitter.cancel()
    await wait_until(lambda: flights.waiters("k") == 1)
    flights.end("k", "answer")
    assert await stayer == "answer"


async def test_no_flight_means_no_wait() -> None:
    flights: SingleFlight[str] = SingleFlight()
    assert await flights.follow("nothing", 5.0) is None
