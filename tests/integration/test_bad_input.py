"""Malformed HTTP, smuggling attempts, oversized headers and slowloris: a 4xx, nothing upstream,
and everyone else keeps being served."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import base, json_body, pods_and_gateway, raw_request, status_of

pytestmark = pytest.mark.timeout(60)

BAD_REQUESTS = {
    "garbage request line": b"HELLO\r\n\r\n",
    "bad method token": b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad version": b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    "header without colon": b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "CL and TE together": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two different Content-Lengths": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"
    ),
    "negative Content-Length": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "bad chunk size": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "TE not chunked last": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
    ),
    "NUL in header": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
async def test_malformed_requests_get_a_json_400_and_never_reach_a_backend(name: str) -> None:
    async with pods_and_gateway(1) as (pods, gw):
        raw = await raw_request(gw.public_port, BAD_REQUESTS[name])
        status = status_of(raw)
        assert 400 <= status < 500, (name, raw[:200])
        assert json_body(raw)["error"]["type"]
        assert b"Traceback" not in raw
        assert pods[0].state.served == 0
        async with aiohttp.ClientSession() as client, client.get(f"{base(gw)}/echo") as resp:
            assert resp.status == 200  # the gateway keeps serving


async def test_too_many_and_too_long_header_lines_are_431() -> None:
    async with pods_and_gateway(1, "limits: {max_header_size: 4KiB}\n") as (pods, gw):
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(300))
        raw = await raw_request(gw.public_port, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        assert status_of(raw) == 431
        long_value = b"X-Long: " + b"v" * 10000 + b"\r\n"
        raw = await raw_request(
            gw.public_port, b"GET / HTTP/1.1\r\nHost: x\r\n" + long_value + b"\r\n"
        )
        assert status_of(raw) == 431
        assert json_body(raw)["error"]["type"] == "headers_too_large"
        assert pods[0].state.served == 0


async def test_slowloris_gets_408_while_others_are_served() -> None:
    extra = "timeouts: {request_header: 500ms}\n"
    async with pods_and_gateway(1, extra) as (pods, gw):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()

        async def trickle() -> None:
            for i in range(100):  # one header byte at a time, never finishing the headers
                writer.write(b"X-Slow-%d: y\r\n" % i)
                await writer.drain()
                await asyncio.sleep(0.05)

        trickler = asyncio.create_task(trickle())
        try:
            async with aiohttp.ClientSession() as client:
                for _ in range(5):  # meanwhile, a normal client is served at once
                    async with client.get(f"{base(gw)}/echo") as resp:
                        assert resp.status == 200
            answer = await asyncio.wait_for(reader.read(4096), 5)
            assert answer.startswith(b"HTTP/1.1 408")
            assert (
                json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["type"] == "request_timeout"
            )
            assert await asyncio.wait_for(reader.read(1), 5) == b""  # and the connection is closed
        finally:
            trickler.cancel()
            writer.close()
        assert pods[0].state.served == 0


http_token = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12
)
raw_requests = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda method, path, headers, body: (
            method.encode("latin-1", "replace")
            + b" "
            + path.encode("utf-8", "replace")
            + b" HTTP/1.1\r\n"
            + b"".join(
                k.encode("latin-1", "replace") + b": " + v.encode("latin-1", "replace") + b"\r\n"
                for k, v in headers
            )
            + b"\r\n"
            + body
        ),
        st.sampled_from(["GET", "POST", "PUT", "X", "", "GET\x00"]) | http_token,
        st.text(max_size=40).map(lambda p: "/" + p),
        st.lists(
            st.tuples(
                http_token
                | st.sampled_from(["Content-Length", "Transfer-Encoding", "Host", "Connection"]),
                st.text(max_size=30),
            ),
            max_size=6,
        ),
        st.binary(max_size=64),
    ),
)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=raw_requests)
def test_fuzzed_requests_never_crash_or_5xx_the_gateway(data: bytes, fuzz_gateway) -> None:  # type: ignore[no-untyped-def]
    loop, gw = fuzz_gateway
    raw = loop.run_until_complete(raw_request(gw.public_port, data, read_timeout_s=1.0))
    if raw.startswith(b"HTTP/1.1 "):
        status = status_of(raw)
        head = raw.partition(b"\r\n\r\n")[0].lower()
        produced_by_gateway = b"x-tailgate-error" in head
        assert not (status >= 500 and produced_by_gateway), raw[:300]
    ok = loop.run_until_complete(
        raw_request(gw.public_port, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    assert status_of(ok) == 200


@pytest.fixture(scope="module")
def fuzz_gateway():  # type: ignore[no-untyped-def]
    loop = asyncio.new_event_loop()
    manager = pods_and_gateway(1, "timeouts: {request_header: 300ms}\n")
    pods_gw = loop.run_until_complete(manager.__aenter__())
    try:
        yield loop, pods_gw[1]
    finally:
        loop.run_until_complete(manager.__aexit__(None, None, None))
        loop.close()
