"""Clients that try to hurt other clients or the fleet: raw sockets against a real gateway in
front of real aiohttp backends. Each test is one finding of the hostile-client review; every
one of them failed before the gateway's defences against it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.helpers import (
    admin,
    base,
    get_json,
    json_body,
    pods_and_gateway,
    raw_request,
    running_gateway,
    start_pod,
    status_of,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


def sample(gw, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    return gw.runtime.metrics.registry.get_sample_value(name, labels) or 0.0


def upstream_failures(gw, backend: str) -> float:  # type: ignore[no-untyped-def]
    kinds = ("timeout", "reset", "connect-failure", "client-body", "client-body-timeout")
    return sum(
        sample(gw, "tailgate_upstream_failures_total", backend=backend, kind=kind) for kind in kinds
    )


async def backend_state(gw, name: str) -> str:  # type: ignore[no-untyped-def]
    snapshot = await get_json(f"{admin(gw)}/admin/backends")
    for backend in snapshot["groups"]["default"]["backends"]:
        if backend["name"] == name:
            return str(backend["health"]["state"])
    raise AssertionError(f"no backend {name}")


async def read_head(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bytes:
    async with asyncio.timeout(timeout_s):
        return await reader.readuntil(b"\r\n\r\n")


# -- 1. CONNECT and bodiless methods must not desynchronise pooled upstream connections ------


async def test_connect_is_refused_and_the_pooled_connections_stay_clean() -> None:
    connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    async with pods_and_gateway(1) as (pods, gw), aiohttp.ClientSession() as client:

        async def get() -> int:
            async with client.get(f"{base(gw)}/echo") as resp:
                return resp.status

        statuses: list[int] = []
        for _ in range(10):  # other clients reuse the gateway's upstream connections at once
            raw, *burst = await asyncio.gather(
                raw_request(gw.public_port, connect), *(get() for _ in range(10))
            )
            statuses += burst
            assert status_of(raw) == 405
            assert json_body(raw)["error"]["type"] == "method_not_allowed"
            assert json_body(raw)["error"]["request_id"]
        assert statuses == [200] * 100


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND"])
async def test_methods_the_gateway_cannot_frame_are_refused(method: str) -> None:
    async with pods_and_gateway(1) as (pods, gw):
        raw = await raw_request(
            gw.public_port, f"{method} /echo HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        assert status_of(raw) == (405 if method == "TRACE" else 501)
        assert json_body(raw)["error"]["request_id"]
        assert pods[0].state.served == 0


async def test_a_chunked_body_on_a_get_goes_upstream_with_a_length() -> None:
    async with pods_and_gateway(1) as (pods, gw):
        raw = await raw_request(
            gw.public_port,
            b"GET /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
        )
        assert status_of(raw) == 200
        echoed = json_body(raw)
        sent = {name.lower(): value for name, value in echoed["headers"]}
        assert "transfer-encoding" not in sent
        assert sent["content-length"] == "5"
        assert echoed["body_len"] == 5
        async with aiohttp.ClientSession() as client:
            for _ in range(50):  # the connection it used is reused cleanly
                async with client.get(f"{base(gw)}/echo") as resp:
                    assert resp.status == 200


# -- 2. a slow upload is the client's time, never the backend's failure ----------------------


async def trickle(pieces: int, pause_s: float) -> AsyncIterator[bytes]:
    for _ in range(pieces):
        yield b'{"x": 1}   '
        await asyncio.sleep(pause_s)  # the client's own pace: this is what is under test


async def test_slow_uploads_outlasting_per_try_are_served_and_never_eject_the_backend() -> None:
    extra = (
        "timeouts: {per_try: 300ms}\n"
        "circuit_breaker: {failure_threshold: 2}\n"
        "outlier_detection: {consecutive_gateway_failure: 2}\n"
        "health_check: {enabled: false}\n"
    )
    async with pods_and_gateway(1, extra) as (pods, gw), aiohttp.ClientSession() as client:

        async def upload() -> int:
            body = trickle(pieces=5, pause_s=0.2)  # ~1 s of body: over per_try
            async with client.post(f"{base(gw)}/upload", data=body) as resp:
                return resp.status

        statuses = await asyncio.gather(*(upload() for _ in range(6)))
        assert statuses == [200] * 6
        assert upstream_failures(gw, "pod0") == 0
        assert await backend_state(gw, "pod0") == "closed"
        # The latency the balancer learnt is the backend's, not the >= 0.8 s of trickled body.
        samples = sample(gw, "inference_latency_seconds_count", backend="pod0")
        total_s = sample(gw, "inference_latency_seconds_sum", backend="pod0")
        assert samples == 6
        assert total_s / samples < 0.4


# -- 3. a body that stops arriving gets 408 and is not the backend's failure -----------------


@pytest.mark.parametrize("declared", [100, 5000])  # buffered, then streamed (over buffer_limit)
async def test_a_half_sent_body_gets_408_after_the_body_deadline(declared: int) -> None:
    extra = (
        "timeouts: {request_body_idle: 300ms, request_body: 2s}\n"
        "retries: {buffer_limit: 1KiB}\n"
        "health_check: {enabled: false}\n"
    )
    async with pods_and_gateway(1, extra) as (pods, gw):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
        try:
            writer.write(
                b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\nab" % declared
            )
            await writer.drain()
            head = await read_head(reader)
            assert head.startswith(b"HTTP/1.1 408")
            rest = await asyncio.wait_for(reader.read(), 5)  # then the connection closes
            assert json.loads(rest)["error"]["type"] == "request_timeout"
            assert json.loads(rest)["error"]["request_id"]
        finally:
            writer.close()
        assert upstream_failures(gw, "pod0") == 0
        assert sample(gw, "tailgate_client_body_failures_total", kind="client-body-timeout") == 1
        assert await backend_state(gw, "pod0") == "closed"


async def test_a_trickled_body_is_bounded_in_total() -> None:
    extra = "timeouts: {request_body_idle: 1s, request_body: 600ms}\n"
    async with pods_and_gateway(1, extra) as (pods, gw):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
        try:
            writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            await writer.drain()

            async def drip() -> None:
                for _ in range(100):  # a byte every 100 ms: never idle, never done
                    writer.write(b"a")
                    await writer.drain()
                    await asyncio.sleep(0.1)

            dripping = asyncio.create_task(drip())
            try:
                assert (await read_head(reader)).startswith(b"HTTP/1.1 408")
            finally:
                dripping.cancel()
        finally:
            writer.close()


# -- 4. client-caused conditions never log a traceback ---------------------------------------


async def test_client_caused_conditions_log_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    extra = (
        "timeouts: {request_header: 300ms}\n"
        "routes:\n"
        "  - {match: {model: m}, groups: [{name: default}]}\n"
    )
    caplog.set_level(logging.DEBUG)
    async with pods_and_gateway(1, extra) as (pods, gw):
        # a header timeout
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        assert (await read_head(reader)).startswith(b"HTTP/1.1 408")
        writer.close()
        # garbage on the admin port
        raw = await raw_request(gw.admin_port, b"G(T / HTTP/1.1\r\n\r\n")
        assert status_of(raw) == 400
        assert json_body(raw)["error"]["type"] == "bad_request"
        # a 100,000-deep JSON body on a route matching model
        deep = b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        async with (
            aiohttp.ClientSession() as client,
            client.post(f"{base(gw)}/v1/completions", data=deep) as resp,
        ):
            assert resp.status == 400
            error = (await resp.json())["error"]
            assert error["type"] == "bad_request"
            assert error["request_id"] == resp.headers["X-Request-ID"]
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- 5. model routing reads chunked and large bodies -----------------------------------------

MODEL_ROUTES = (
    "routes:\n"
    "  - {name: big, match: {model: big-model}, groups: [{name: big}]}\n"
    "retries: {buffer_limit: 1KiB}\n"
    "headers: {expose_backend: true}\n"
)


async def test_model_routing_reads_chunked_and_over_buffer_limit_bodies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tailgate.access")

    small, big = await start_pod("small"), await start_pod("big")
    yaml_text = (
        "listen: {host: 127.0.0.1, port: 0}\nadmin: {host: 127.0.0.1, port: 0}\nbackends:\n"
        f"  - {{url: '{small.url}', name: small}}\n"
        f"  - {{url: '{big.url}', name: big, group: big}}\n"
        "logging: {access_log: true}\n" + MODEL_ROUTES
    )
    prompt = "x" * 4000  # over buffer_limit
    body = json.dumps({"prompt": prompt, "model": "big-model"}).encode()

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    try:
        async with running_gateway(yaml_text) as gw, aiohttp.ClientSession() as client:
            for data in (body, chunked()):
                async with client.post(f"{base(gw)}/v1/completions", data=data) as resp:
                    assert resp.status == 200
                    assert resp.headers["X-Tailgate-Backend"] == "big"
            async with client.post(f"{base(gw)}/v1/completions", data=b"not json") as resp:
                assert resp.status == 200
                assert resp.headers["X-Tailgate-Backend"] == "small"
            assert sample(gw, "tailgate_route_model_undecided_total", reason="not_json") == 1
        logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tailgate.access"]
        assert [entry.get("model_undecided") for entry in logged] == [None, None, "not_json"]
    finally:
        await small.runner.cleanup()
        await big.runner.cleanup()


# -- 6. the low items ------------------------------------------------------------------------


async def test_dot_segments_are_refused_not_routed_on_one_path_and_sent_as_another() -> None:
    async with pods_and_gateway(1) as (pods, gw):
        for target in (b"/v2/../v1/x", b"/v1/%2e%2e/admin", b"/./echo"):
            raw = await raw_request(
                gw.public_port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            assert status_of(raw) == 400, target
            assert "ambiguous path" in json_body(raw)["error"]["message"]
        assert pods[0].state.served == 0


@pytest.mark.parametrize("line", [b"GET /echo HTTP/2.0", b"GET /echo"])
async def test_only_http_1_0_and_1_1_are_served(line: bytes) -> None:
    async with pods_and_gateway(1) as (pods, gw):
        raw = await raw_request(gw.public_port, line + b"\r\nHost: x\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 505 ")
        assert json_body(raw)["error"]["type"] == "http_version_not_supported"


async def test_expect_100_continue_is_answered_before_the_body() -> None:
    async with pods_and_gateway(1) as (pods, gw):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
        try:
            writer.write(
                b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            await writer.drain()
            assert await read_head(reader) == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"hello")
            await writer.drain()
            assert (await read_head(reader)).startswith(b"HTTP/1.1 200")
        finally:
            writer.close()


async def test_an_over_long_url_is_414() -> None:
    async with pods_and_gateway(1) as (pods, gw):
        raw = await raw_request(gw.public_port, b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n")
        assert status_of(raw) == 414
        assert json_body(raw)["error"]["type"] == "uri_too_long"


async def test_a_client_that_stops_reading_is_cut_off_at_the_total_timeout() -> None:
    async with pods_and_gateway(1, "timeouts: {per_try: 1s, total: 1s}\n") as (pods, gw):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
        try:
            writer.write(b"GET /download?size=1000000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            # Read nothing until the gateway has given up on the exchange.
            await wait_until(
                lambda: (
                    sample(
                        gw, "tailgate_requests_total", route="default", backend="pod0", code="200"
                    )
                    == 1
                ),
                timeout_s=10,
            )
            # ... and its connection is gone, though its unread answer fills the buffers.
            server = gw._public_runner.server
            await wait_until(lambda: not server.connections, timeout_s=5)
        finally:
            writer.close()


async def test_options_star_is_answered_by_the_gateway() -> None:
    async with pods_and_gateway(1) as (pods, gw):
        raw = await raw_request(
            gw.public_port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status_of(raw) == 204
        assert b"allow: " in raw.lower()
        assert pods[0].state.served == 0


@pytest.mark.parametrize("trusted", [False, True])
async def test_client_forwarding_headers_are_replaced_unless_it_is_a_trusted_proxy(
    trusted: bool,
) -> None:
    extra = "headers: {trusted_proxies: [127.0.0.0/8]}\n" if trusted else ""
    spoofed = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "X-Real-IP": "6.6.6.6",
        "Forwarded": "for=6.6.6.6",
    }
    async with pods_and_gateway(1, extra) as (pods, gw), aiohttp.ClientSession() as client:
        async with client.get(f"{base(gw)}/echo", headers=spoofed) as resp:
            sent = {name.lower(): value for name, value in (await resp.json())["headers"]}
    if trusted:
        assert sent["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"
        assert sent["x-forwarded-host"] == "evil.example"
        assert sent["x-real-ip"] == "6.6.6.6"
    else:
        assert sent["x-forwarded-for"] == "127.0.0.1"
        assert sent["x-forwarded-proto"] == "http"
        assert sent["x-forwarded-host"] != "evil.example"
        assert "x-real-ip" not in sent and "forwarded" not in sent
