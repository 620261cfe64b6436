"""Bodies stream both ways: SSE events arrive one by one, large bodies pass in bounded memory."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import pytest

from tests.helpers import GatewayProcess, Pod, base, gateway_yaml, pods_and_gateway, start_pod

pytestmark = pytest.mark.timeout(60)


async def test_sse_event_reaches_client_while_upstream_is_blocked() -> None:
    """The first event arrives while the pod is still blocked before its second (no timer)."""
    async with pods_and_gateway(1) as (pods, gw), aiohttp.ClientSession() as client:
        async with client.get(f"{base(gw)}/gated-stream") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            first = await resp.content.readuntil(b"\n\n")
            assert first == b'data: {"n": 1}\n\n'
            # The pod cannot have sent more: it waits on its gate, which only we open.
            assert not pods[0].state.gate.is_set()
            async with client.post(f"{pods[0].url}/_control", json={"release": True}) as ctl:
                assert ctl.status == 200
            rest = await resp.read()
        assert rest == b'data: {"n": 2}\n\ndata: [DONE]\n\n'


async def test_streamed_completion_passes_event_by_event() -> None:
    async with pods_and_gateway(1) as (pods, gw), aiohttp.ClientSession() as client:
        async with client.post(f"{base(gw)}/v1/completions", json={"stream": True}) as resp:
            events = [line async for line in resp.content if line.strip()]
        assert len(events) == 4 and events[-1] == b"data: [DONE]\n"


def _pattern(size: int) -> bytes:
    block = bytes(range(256)) * 256
    return (block * (size // len(block) + 1))[:size]


async def test_large_bodies_both_ways_in_bounded_memory() -> None:
    """64 MiB up and 64 MiB down through a gateway process whose peak RSS stays far below."""
    size = 64 * 1024 * 1024
    pod: Pod = await start_pod("big")
    admin_port = 0
    try:
        from tests.helpers import free_port

        admin_port = free_port()
        listen_port = free_port()
        yaml_text = (
            gateway_yaml([pod])
            .replace(
                "listen: {host: 127.0.0.1, port: 0}",
                f"listen: {{host: 127.0.0.1, port: {listen_port}}}",
            )
            .replace(
                "admin: {host: 127.0.0.1, port: 0}",
                f"admin: {{host: 127.0.0.1, port: {admin_port}}}",
            )
        )
        yaml_text += "limits: {max_body: 128MiB}\nhealth_check: {enabled: false}\n"
        proc = GatewayProcess(yaml_text)
        try:
            await asyncio.to_thread(proc.wait_ready, admin_port)
            baseline_kib = proc.rss_peak_kib()
            url = f"http://127.0.0.1:{listen_port}"
            payload = _pattern(size)

            async def chunks():  # type: ignore[no-untyped-def]
                for i in range(0, size, 1 << 20):
                    yield payload[i : i + (1 << 20)]

            async with aiohttp.ClientSession() as client:
                async with client.post(f"{url}/upload", data=chunks()) as resp:
                    result = await resp.json()
                assert result["body_len"] == size
                assert result["body_sha256"] == hashlib.sha256(payload).hexdigest()
                digest = hashlib.sha256()
                received = 0
                async with client.get(f"{url}/download?size={size}") as resp:
                    assert resp.headers["Content-Length"] == str(size)
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        digest.update(chunk)
                        received += len(chunk)
                assert received == size
                assert digest.hexdigest() == hashlib.sha256(_pattern(size)).hexdigest()
            growth_mib = (proc.rss_peak_kib() - baseline_kib) / 1024
            print(f"\n64 MiB up + 64 MiB down: gateway peak RSS grew {growth_mib:.1f} MiB")
            assert growth_mib < 24, f"gateway peak memory grew by {growth_mib:.1f} MiB"
        finally:
            proc.stop()
    finally:
        await pod.runner.cleanup()
