"""Rate limits shared by two gateways through a real redis-server, and the fallback to
per-replica limits when Redis goes away (never a failed request)."""

from __future__ import annotations

import aiohttp

from tests.helpers import base, free_port, gateway_yaml, running_gateway, start_pod, wait_until
from tests.redis_server import redis_server


async def test_two_replicas_share_one_limit_and_survive_redis_going_away() -> None:
    pod = await start_pod("pod0")
    async with redis_server() as (proc, port):
        extra = (
            "admission:\n"
            "  default_limits: {requests_per_minute: 4}\n"
            f"  shared_limits: {{redis_url: 'redis://127.0.0.1:{port}/0', retry_after: 30s}}\n"
        )
        try:
            async with (
                running_gateway(gateway_yaml([pod], extra)) as one,
                running_gateway(gateway_yaml([pod], extra)) as two,
                aiohttp.ClientSession() as s,
            ):
                headers = {"X-Tenant": "team-a"}
                statuses = []
                for gw in (one, two, one, two, one, two):
                    async with s.post(f"{base(gw)}/v1/completions", headers=headers) as r:
                        statuses.append(r.status)
                assert statuses == [200, 200, 200, 200, 429, 429]  # 4 a minute, fleet-wide
                proc.kill()
                proc.wait(timeout=10)
                await wait_until(lambda: proc.poll() is not None)
                fallback = []
                for _ in range(5):  # each replica's own bucket: 4 each, then 429, never 5xx
                    async with s.post(f"{base(one)}/v1/completions", headers=headers) as r:
                        fallback.append(r.status)
                assert fallback == [200, 200, 200, 200, 429]
                assert one.runtime.tenant_gate.limiter.fallbacks >= 1
        finally:
            await pod.runner.cleanup()


async def test_an_unreachable_redis_never_fails_a_request() -> None:
    pod = await start_pod("pod0")
    dead_port = free_port()  # nothing listens there
    extra = (
        "admission:\n"
        "  default_limits: {requests_per_minute: 3}\n"
        f"  shared_limits: {{redis_url: 'redis://127.0.0.1:{dead_port}/0'}}\n"
    )
    try:
        async with running_gateway(gateway_yaml([pod], extra)) as gw, aiohttp.ClientSession() as s:
            statuses = []
            for _ in range(4):
                async with s.post(f"{base(gw)}/v1/completions") as r:
                    statuses.append(r.status)
            assert statuses == [200, 200, 200, 429]  # this replica's own bucket decides
            assert gw.runtime.tenant_gate.limiter.fallbacks >= 1
    finally:
        await pod.runner.cleanup()
