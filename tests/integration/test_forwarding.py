"""The forwarding path: methods, paths, queries, bodies and headers arrive as they should."""

from __future__ import annotations

import hashlib
import json

import aiohttp
import pytest

from tests.helpers import (
    base,
    gateway_yaml,
    json_body,
    pods_and_gateway,
    raw_request,
    running_gateway,
    start_pod,
    status_of,
)

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_method_path_query_and_body_unchanged(method: str) -> None:
    async with pods_and_gateway(1) as (pods, gw), aiohttp.ClientSession() as client:
        body = b"" if method in ("GET", "OPTIONS") else b'{"x": "\xc3\xa9"}'
        url = f"{base(gw)}/echo/a%2Fb/c?q=1&q=2&sp=a%20b&empty="
        async with client.request(method, url, data=body or None) as resp:
            assert resp.status == 200
            echo = await resp.json()
        assert echo["method"] == method
        assert echo["path_qs"] == "/echo/a%2Fb/c?q=1&q=2&sp=a%20b&empty="
        assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_hop_by_hop_headers_stripped_both_ways() -> None:
    async with pods_and_gateway(1) as (pods, gw), aiohttp.ClientSession() as client:
        headers = {
            "Connection": "keep-alive, X-Private",
            "X-Private": "secret-to-this-hop",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Proxy-Foo": "1",
            "Upgrade": "h2c",
            "X-End-To-End": "kept",
        }
        async with client.get(f"{base(gw)}/echo", headers=headers) as resp:
            echo = await resp.json()
            response_headers = resp.headers
        received = {k.lower(): v for k, v in echo["headers"]}
        for name in (
            "x-private",
            "keep-alive",
            "te",
            "proxy-authorization",
            "proxy-foo",
            "upgrade",
        ):
            assert name not in received, name
        assert received["x-end-to-end"] == "kept"
        # The pod answers with "Connection: keep-alive, X-Hop" and "X-Hop: 1": neither passes.
        assert "X-Hop" not in response_headers
        assert response_headers.get("X-Pod") == "pod0"


async def test_forwarded_headers_and_request_id() -> None:
    async with pods_and_gateway(1) as (pods, gw), aiohttp.ClientSession() as client:
        async with client.get(
            f"{base(gw)}/echo", headers={"X-Forwarded-For": "203.0.113.7", "Host": "api.example"}
        ) as resp:
            echo = await resp.json()
            generated = resp.headers["X-Request-ID"]
        received = {k.lower(): v for k, v in echo["headers"]}
        # the client's own chain is not trusted by default (headers.trusted_proxies)
        assert received["x-forwarded-for"] == "127.0.0.1"
        assert received["x-forwarded-proto"] == "http"
        assert received["x-forwarded-host"] == "api.example"
        assert received["host"] == f"127.0.0.1:{pods[0].port}"
        assert len(generated) == 32 and received["x-request-id"] == generated

        async with client.get(f"{base(gw)}/echo", headers={"X-Request-ID": "abc-123"}) as resp:
            echo = await resp.json()
            assert resp.headers["X-Request-ID"] == "abc-123"
        assert {k.lower(): v for k, v in echo["headers"]}["x-request-id"] == "abc-123"


async def test_client_cannot_steer_to_other_hosts() -> None:
    """Absolute-URI requests and Host headers never choose the upstream address."""
    async with pods_and_gateway(1) as (pods, gw):
        raw = await raw_request(
            gw.public_port,
            b"GET http://169.254.169.254/echo/meta?x=1 HTTP/1.1\r\nHost: 169.254.169.254\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert status_of(raw) == 200
        echo = json_body(raw)
        assert echo["backend"] == "pod0"
        assert echo["path_qs"] == "/echo/meta?x=1"


async def test_backend_header_only_when_enabled() -> None:
    async with pods_and_gateway(1) as (pods, gw), aiohttp.ClientSession() as client:
        async with client.get(f"{base(gw)}/echo") as resp:
            assert "X-Tailgate-Backend" not in resp.headers
    async with pods_and_gateway(1, "headers: {expose_backend: true}\n") as (pods, gw):
        async with aiohttp.ClientSession() as client, client.get(f"{base(gw)}/echo") as resp:
            assert resp.headers["X-Tailgate-Backend"] == "pod0"


async def test_backend_header_never_shows_an_unnamed_backends_address() -> None:
    pod = await start_pod("p")
    try:
        async with running_gateway(
            gateway_yaml([pod.url], "headers: {expose_backend: true}\n")
        ) as gw:
            async with aiohttp.ClientSession() as client, client.get(f"{base(gw)}/echo") as resp:
                label = resp.headers["X-Tailgate-Backend"]
            assert label.startswith("backend-") and str(pod.port) not in label
        extra = "headers: {expose_backend: true, expose_backend_address: true}\n"
        async with running_gateway(gateway_yaml([pod.url], extra)) as gw:
            async with aiohttp.ClientSession() as client, client.get(f"{base(gw)}/echo") as resp:
                assert resp.headers["X-Tailgate-Backend"] == f"127.0.0.1:{pod.port}"
    finally:
        await pod.runner.cleanup()


async def test_round_robin_spreads_evenly() -> None:
    extra = "balancer: {policy: round_robin}\nhedging: {enabled: false}\n"  # counts picks
    async with pods_and_gateway(3, extra) as (pods, gw), aiohttp.ClientSession() as client:
        for _ in range(300):
            async with client.post(f"{base(gw)}/v1/completions", json={"prompt": "x"}) as resp:
                assert resp.status == 200
                await resp.read()
        assert [pod.state.served for pod in pods] == [100, 100, 100]


async def test_upstream_error_status_passes_through_with_its_body() -> None:
    async with pods_and_gateway(1) as (pods, gw), aiohttp.ClientSession() as client:
        async with client.get(f"{base(gw)}/status/418") as resp:
            assert resp.status == 418
            assert json.loads(await resp.text()) == {"status": 418}
            assert "X-Tailgate-Error" not in resp.headers


async def test_bodiless_responses_pass_and_the_connection_stays_usable() -> None:
    """HEAD keeps the upstream's Content-Length with no body; 204 and 304 carry none."""
    async with pods_and_gateway(1) as (pods, gw), aiohttp.ClientSession() as client:
        async with client.head(f"{base(gw)}/echo") as resp:
            assert resp.status == 200
            assert int(resp.headers["Content-Length"]) > 0
            assert await resp.read() == b""
        for status in (204, 304):
            async with client.get(f"{base(gw)}/status/{status}") as resp:
                assert resp.status == status
                assert await resp.read() == b""
        async with client.get(f"{base(gw)}/echo") as resp:
            assert resp.status == 200
