"""Each failure maps to its status with a small JSON error body and never a stack trace."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.helpers import (
    base,
    free_port,
    gateway_yaml,
    pods_and_gateway,
    running_gateway,
    start_pod,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

NO_RETRY = "retries: {attempts: 1}\nhealth_check: {enabled: false}\n"


def assert_gateway_error(body: str, kind: str) -> None:
    payload = json.loads(body)
    assert payload["error"]["type"] == kind
    assert "Traceback" not in body and 'File "' not in body
    assert payload["error"]["request_id"]


async def test_body_over_limit_is_413_and_never_sent_upstream() -> None:
    extra = "limits: {max_body: 1KiB}\n" + NO_RETRY
    async with pods_and_gateway(1, extra) as (pods, gw), aiohttp.ClientSession() as client:
        async with client.post(f"{base(gw)}/upload", data=b"x" * 2048) as resp:
            assert resp.status == 413
            assert_gateway_error(await resp.text(), "body_too_large")

        async def chunked():  # no Content-Length: the limit is enforced while streaming
            for _ in range(8):
                yield b"y" * 512

        async with client.post(f"{base(gw)}/upload", data=chunked()) as resp:
            assert resp.status == 413
        assert pods[0].state.served == 0


async def test_oversized_headers_are_431() -> None:
    extra = "limits: {max_header_size: 4KiB}\n"
    async with pods_and_gateway(1, extra) as (pods, gw), aiohttp.ClientSession() as client:
        headers = {f"X-Filler-{i}": "v" * 200 for i in range(40)}  # each small, together 9 KiB
        async with client.get(f"{base(gw)}/echo", headers=headers) as resp:
            assert resp.status == 431
            assert_gateway_error(await resp.text(), "headers_too_large")
        async with client.get(f"{base(gw)}/echo", headers={"X-Big": "v" * 8000}) as resp:
            assert resp.status == 431
            assert json.loads(await resp.text())["error"]["type"] == "headers_too_large"


async def test_connect_refused_is_502() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with running_gateway(gateway_yaml([dead], NO_RETRY)) as gw:
        async with aiohttp.ClientSession() as client, client.get(f"{base(gw)}/x") as resp:
            assert resp.status == 502
            assert_gateway_error(await resp.text(), "upstream_connect_failure")


async def test_reset_before_headers_is_502() -> None:
    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()  # RST, no response

    server = await asyncio.start_server(slam, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_gateway(gateway_yaml([f"http://127.0.0.1:{port}"], NO_RETRY)) as gw:
            async with aiohttp.ClientSession() as client, client.get(f"{base(gw)}/x") as resp:
                assert resp.status == 502
                assert_gateway_error(await resp.text(), "upstream_reset")
    finally:
        server.close()


async def test_per_try_timeout_is_504() -> None:
    extra = "timeouts: {per_try: 200ms, total: 5s}\n" + NO_RETRY
    async with pods_and_gateway(1, extra) as (pods, gw), aiohttp.ClientSession() as client:
        async with client.post(f"{pods[0].url}/_control", json={"hang": True}):
            pass
        async with client.post(f"{base(gw)}/v1/completions", json={}) as resp:
            assert resp.status == 504
            assert_gateway_error(await resp.text(), "upstream_timeout")


async def test_total_timeout_is_504() -> None:
    """Three 200 ms tries do not fit in a 500 ms route timeout: the route timeout answers."""
    extra = (
        "timeouts: {per_try: 200ms, total: 500ms}\n"
        "retries: {attempts: 3, retry_on: [timeout], backoff_base: 0s, budget_percent: 100}\n"
        "health_check: {enabled: false}\n"
    )
    async with pods_and_gateway(1, extra) as (pods, gw), aiohttp.ClientSession() as client:
        async with client.post(f"{pods[0].url}/_control", json={"hang": True}):
            pass
        async with client.get(f"{base(gw)}/v1/models") as resp:
            assert resp.status == 504
            body = await resp.text()
            assert_gateway_error(body, "upstream_timeout")
            assert "route timeout" in body


async def test_client_disconnect_cancels_the_upstream_request() -> None:
    upstream_saw_close = asyncio.Event()
    request_arrived = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        request_arrived.set()
        if await reader.read(1) == b"":  # EOF: the gateway closed its upstream connection
            upstream_saw_close.set()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_gateway(gateway_yaml([f"http://127.0.0.1:{port}"], NO_RETRY)) as gw:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            await asyncio.wait_for(request_arrived.wait(), 5)
            writer.close()  # the client gives up
            await asyncio.wait_for(upstream_saw_close.wait(), 5)
            endpoint = next(iter(gw.runtime.fleet.endpoints.values()))
            await wait_until(lambda: endpoint.signals.in_flight == 0, timeout_s=5)
    finally:
        server.close()


async def test_upstream_failure_mid_stream_cuts_the_client_off() -> None:
    """A response that breaks off upstream must not look complete to the client."""

    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
        await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(half, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_gateway(gateway_yaml([f"http://127.0.0.1:{port}"], NO_RETRY)) as gw:
            async with aiohttp.ClientSession() as client:
                with pytest.raises(aiohttp.ClientPayloadError):
                    async with client.get(f"{base(gw)}/x") as resp:
                        await resp.read()
    finally:
        server.close()


async def test_no_backend_at_all_is_a_clean_503() -> None:
    pod = await start_pod("only")
    extra = "outlier_detection: {panic_threshold: 0}\nhealth_check: {enabled: false}\n"
    try:
        async with running_gateway(gateway_yaml([pod], extra)) as gw:
            gw.runtime.apply_backends([])  # as if discovery had just removed the only one
            async with aiohttp.ClientSession() as client, client.get(f"{base(gw)}/x") as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "1"
                assert resp.headers["X-Tailgate-Shed"] == "1"
                assert_gateway_error(await resp.text(), "overloaded")
    finally:
        await pod.runner.cleanup()
