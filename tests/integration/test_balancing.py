"""Latency-aware balancing against real pods: shares of traffic, not timings, are asserted."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import pytest

from tests.helpers import admin, base, get_json, pods_and_gateway, wait_until

pytestmark = pytest.mark.timeout(90)

REQUESTS = 300
CONCURRENCY = 6


async def drive(url: str, requests: int = REQUESTS, concurrency: int = CONCURRENCY) -> Counter[str]:
    """Send ``requests`` POSTs with ``concurrency`` workers; count who served each."""
    served: Counter[str] = Counter()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker(client: aiohttp.ClientSession) -> None:
        while not queue.empty():
            queue.get_nowait()
            async with client.post(f"{url}/v1/completions", json={"prompt": "x"}) as resp:
                assert resp.status == 200
                served[resp.headers["X-Tailgate-Backend"]] += 1
                await resp.read()

    async with aiohttp.ClientSession() as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return served


async def start_fleet_with_slow_pod(policy_yaml: str):  # type: ignore[no-untyped-def]
    extra = f"headers: {{expose_backend: true}}\nhealth_check: {{enabled: false}}\n{policy_yaml}"
    return pods_and_gateway(3, extra, service_s=0.01, slots=4)


async def test_weighted_score_sends_the_slow_pod_well_under_a_third() -> None:
    async with await start_fleet_with_slow_pod("balancer: {policy: weighted_score}\n") as (
        pods,
        gw,
    ):
        pods[2].state.faults.slow_factor = 5.0
        served = await drive(base(gw))
    share = served["pod2"] / REQUESTS
    print(f"weighted_score shares: { {k: v / REQUESTS for k, v in sorted(served.items())} }")
    assert share < 0.15, served


async def test_round_robin_gives_the_slow_pod_its_third() -> None:
    # hedging off: a hedge of a slow try would be served elsewhere, and this counts picks
    rr = "balancer: {policy: round_robin}\nhedging: {enabled: false}\n"
    async with await start_fleet_with_slow_pod(rr) as (pods, gw):
        pods[2].state.faults.slow_factor = 5.0
        served = await drive(base(gw))
    assert served["pod2"] == REQUESTS // 3, served


async def test_high_reported_queue_depth_draws_less_traffic() -> None:
    """pod1 reports 40 requests queued (X-Queue-Depth on every answer) from other clients.

    Requests take 100 ms, as short inference calls do: a report keeps its weight for about one
    exchange (the queue it describes turns over), so pod1 is retried now and then and each
    answer reminds the gateway how busy it is.
    """
    extra = "headers: {expose_backend: true}\nhealth_check: {enabled: false}\n"
    async with pods_and_gateway(3, extra, service_s=0.1, slots=4) as (pods, gw):
        pods[1].state.faults.reported_depth = 40
        served = await drive(base(gw), requests=150, concurrency=6)
        print(f"\nshares with pod1 reporting depth 40: {dict(sorted(served.items()))}")
        snapshot = await get_json(f"{admin(gw)}/admin/backends")
    backends = {b["name"]: b for b in snapshot["groups"]["default"]["backends"]}
    assert backends["pod1"]["signals"]["reported_queue_depth"] == 40
    assert served["pod1"] < min(served["pod0"], served["pod2"]) / 3, served


async def test_scraped_queue_depth_steers_traffic_too() -> None:
    """With the header renamed away, only the /metrics scrape can tell the gateway."""
    extra = (
        "balancer:\n  policy: weighted_score\n"
        "  queue_depth: {header: X-Not-Sent, scrape_interval: 50ms}\n"
    )
    async with await start_fleet_with_slow_pod(extra) as (pods, gw):
        pods[0].state.faults.reported_depth = 40
        endpoint = gw.runtime.fleet.endpoints["pod0"]
        await wait_until(  # a scrape has landed
            lambda: bool(endpoint.signals.snapshot(gw.runtime.clock(), 0.1)["reported_queue_depth"])
        )
        served = await drive(base(gw))
    assert served["pod0"] < min(served["pod1"], served["pod2"]) / 3, served


async def test_admin_backends_lists_scores_and_signals() -> None:
    async with pods_and_gateway(2, "headers: {expose_backend: true}\n") as (pods, gw):
        await drive(base(gw), requests=20, concurrency=2)
        snapshot = await get_json(f"{admin(gw)}/admin/backends")
    group = snapshot["groups"]["default"]
    assert group["policy"] == "prefix_aware" and group["selection"] == "p2c"
    for backend in group["backends"]:
        assert backend["score"] is not None
        assert backend["signals"]["latency_samples"] >= 1
        assert backend["health"]["state"] == "closed"
