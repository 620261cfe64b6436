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
methods = st.sampled_from(
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "PROPFIND"]
)


def _chunked(pieces: list[bytes], size_lies: list[int], terminated: bool) -> bytes:
    """A chunked body whose chunk sizes may lie (by ``size_lies``) and may never end."""
    out = b""
    for piece, lie in zip(pieces, size_lies + [0] * len(pieces), strict=False):
        out += b"%x\r\n" % max(len(piece) + lie, 0) + piece + b"\r\n"
    return out + (b"0\r\n\r\n" if terminated else b"")


framed_requests = st.builds(
    lambda method, target, framing, expect: (
        method.encode()
        + b" "
        + target
        + b" HTTP/1.1\r\nHost: x\r\n"
        + (b"Expect: 100-continue\r\n" if expect else b"")
        + framing
    ),
    methods,
    st.sampled_from([b"/echo", b"/upload", b"*", b"/v1/../echo", b"/v1/chat/completions"]),
    st.one_of(
        st.just(b"\r\n"),
        # a body shorter, equal or longer than its Content-Length
        st.builds(
            lambda body, delta: b"Content-Length: %d\r\n\r\n" % max(len(body) + delta, 0) + body,
            st.binary(max_size=64),
            st.integers(min_value=-8, max_value=8),
        ),
        st.builds(
            lambda pieces, lies, terminated: (
                b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(pieces, lies, terminated)
            ),
            st.lists(st.binary(min_size=1, max_size=16), max_size=4),
            st.lists(st.integers(min_value=-2, max_value=2), max_size=4),
            st.booleans(),
        ),
    ),
    st.booleans(),
)
raw_requests = st.one_of(
    framed_requests,
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
        st.sampled_from(["GET", "POST", "PUT", "X", "", "GET\x00"]) | methods | http_token,
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
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=raw_requests)
def test_fuzzed_requests_never_crash_or_5xx_the_gateway(  # type: ignore[no-untyped-def]
    data: bytes, fuzz_gateway, caplog: pytest.LogCaptureFixture
) -> None:
    loop, gw = fuzz_gateway
    raw = loop.run_until_complete(raw_request(gw.public_port, data, read_timeout_s=1.0))
    if raw.startswith(b"HTTP/1.1 "):
        status = status_of(raw)
        head = raw.partition(b"\r\n\r\n")[0].lower()
        produced_by_gateway = b"x-tailgate-error" in head
        refused = status in (501, 505)  # a method or version the gateway does not forward
        assert not (status >= 500 and produced_by_gateway and not refused), raw[:300]
    tracebacks = [
        r for r in caplog.records if r.exc_info and r.name.startswith(("tailgate", "aiohttp"))
    ]
    assert not tracebacks, tracebacks[0].getMessage()
    ok = loop.run_until_complete(
        raw_request(gw.public_port, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    assert status_of(ok) == 200


@pytest.fixture(scope="module")
def fuzz_gateway():  # type: ignore[no-untyped-def]
    loop = asyncio.new_event_loop()
    manager = pods_and_gateway(1, "timeouts: {request_header: 300ms, request_body_idle: 300ms}\n")
    pods_gw = loop.run_until_complete(manager.__aenter__())
    try:
        yield loop, pods_gw[1]
    finally:
        loop.run_until_complete(manager.__aexit__(None, None, None))
        loop.close()
