"""The lean upstream client against real sockets on 127.0.0.1, each answer scripted by hand.

A scripted server lets the tests produce what a friendly backend never would (a reset halfway
through a body, an interim 100, a body that ends with the connection, bad HTTP) and count the
connections the client opened, which is how keep-alive reuse and the cap are checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from multidict import CIMultiDict
from yarl import URL

from gateway.upstream import (
    UpstreamClient,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamResponse,
    UpstreamTimeout,
)
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.timeout(30)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Scripted:
    """A TCP server on 127.0.0.1 running ``script`` for every connection it accepts."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.accepted = 0
        self.open = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> URL:
        assert self.server is not None
        return URL(f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.writers.append(writer)
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[Scripted]:
    server = Scripted(script)
    server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    try:
        yield server
    finally:
        server.server.close()
        for writer in server.writers:
            writer.close()
        await wait_until(lambda: server.open == 0)


@asynccontextmanager
async def client(max_per_origin: int = 8, idle_timeout_s: float = 30.0):  # type: ignore[no-untyped-def]
    upstream = UpstreamClient(max_per_origin, idle_timeout_s)
    try:
        yield upstream
    finally:
        await upstream.close()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def answering(*answers: bytes, keep_open: bool = True) -> Callable[[Scripted], Script]:
    """A script that reads one request head per answer and writes the answer."""

    def bind(server: Scripted) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for answer in answers:
                server.requests.append(await read_head(reader))
                writer.write(answer)
                await writer.drain()
            if keep_open:
                await reader.read()  # until the client closes

        return script

    return bind


@asynccontextmanager
async def serving(make: Callable[[Scripted], Script]) -> AsyncIterator[Scripted]:
    holder: list[Scripted] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await make(holder[0])(reader, writer)

    async with scripted(script) as server:
        holder.append(server)
        yield server


async def get(
    upstream: UpstreamClient,
    base: URL,
    method: str = "GET",
    body: object = None,
    body_length: int | None = None,
    **headers: str,
) -> UpstreamResponse:
    return await upstream.request(
        method,
        base,
        "/x?y=1",
        CIMultiDict(headers),
        body,  # type: ignore[arg-type]
        body_length,
        1.0,
        5.0,
    )


async def read_all(response: UpstreamResponse) -> bytes:
    parts = []
    while chunk := await response.readany():
        parts.append(chunk)
    return b"".join(parts)


async def test_keep_alive_reuses_one_connection() -> None:
    async with serving(answering(OK, OK, OK)) as server, client() as upstream:
        for _ in range(3):
            response = await get(upstream, server.url)
            assert (response.status, await read_all(response)) == (200, b"ok")
            response.release()
        assert server.accepted == 1
        assert server.requests[0].startswith(b"GET /x?y=1 HTTP/1.1\r\n")


async def test_connection_close_is_honoured() -> None:
    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    async with serving(answering(closing, keep_open=False)) as server, client() as upstream:
        for _ in range(2):
            response = await get(upstream, server.url)
            assert await read_all(response) == b"ok"
            response.release()
        assert server.accepted == 2


async def test_chunked_body_streams_chunk_by_chunk() -> None:
    second = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await second.wait()  # the client must have read the first chunk on its own
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with scripted(script) as server, client() as upstream:
        response = await get(upstream, server.url)
        assert response.content_length is None
        assert await response.readany() == b"first"
        second.set()
        assert await read_all(response) == b"second"
        response.release()
        assert len(upstream._pool(server.url).idle) == 1  # clean end: back in the pool


async def test_body_delimited_by_close_is_read_to_the_end_and_not_reused() -> None:
    answer = b"HTTP/1.1 200 OK\r\n\r\nall of it"
    async with serving(answering(answer, keep_open=False)) as server, client() as upstream:
        response = await get(upstream, server.url)
        assert await read_all(response) == b"all of it"
        response.release()
        assert not upstream._pool(server.url).idle


async def test_interim_100_is_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx"
    async with serving(answering(answer, OK)) as server, client() as upstream:
        response = await get(upstream, server.url, "POST", b"{}")
        assert (response.status, response.reason, await read_all(response)) == (
            201,
            "Created",
            b"x",
        )
        response.release()
        again = await get(upstream, server.url)
        assert await read_all(again) == b"ok"
        assert server.accepted == 1


async def test_head_answer_has_no_body_even_with_a_length() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    async with serving(answering(head, OK)) as server, client() as upstream:
        response = await get(upstream, server.url, "HEAD")
        assert response.content_length == 1000
        assert await read_all(response) == b""
        response.release()
        again = await get(upstream, server.url)
        assert await read_all(again) == b"ok"
        assert server.accepted == 1


async def test_headers_and_request_framing() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: Text/Event-Stream; charset=utf-8\r\n"
        b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n"
    )
    async with serving(answering(answer, answer)) as server, client() as upstream:
        response = await get(upstream, server.url, "POST", b"12345", Host="pod:1")
        assert response.content_type == "text/event-stream"
        assert response.headers.getall("set-cookie") == ["a=1", "b=2"]
        response.release()
        empty = await get(upstream, server.url, "GET", None)
        empty.release()
    first, second = (head.decode().lower() for head in server.requests)
    assert "content-length: 5\r\n" in first and "host: pod:1\r\n" in first
    assert "content-length" not in second  # a GET without a body says nothing about one


@pytest.mark.parametrize(
    ("declared", "framing", "other", "wire"),
    [
        (
            None,
            b"transfer-encoding: chunked",
            b"content-length",
            b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
        ),
        (11, b"content-length: 11", b"transfer-encoding", b"hello world"),
    ],
    ids=["chunked-without-a-length", "raw-with-a-declared-length"],
)
async def test_streamed_request_body_framing(
    declared: int | None, framing: bytes, other: bytes, wire: bytes
) -> None:
    received: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await read_head(reader))
        received.append(await reader.readexactly(len(wire)))
        writer.write(OK)
        await writer.drain()
        await reader.read()

    async def body() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b""  # an empty chunk would end a chunked body early: never sent
        yield b"world"

    async with scripted(script) as server, client() as upstream:
        response = await get(upstream, server.url, "POST", body(), declared)
        assert await read_all(response) == b"ok"
        response.release()
        assert len(upstream._pool(server.url).idle) == 1  # the whole body went out: reusable
    head = received[0].lower()
    assert framing in head and other not in head
    assert received[1] == wire


async def test_a_failing_request_body_fails_the_try_with_its_own_error() -> None:
    class ClientGone(Exception):
        pass

    async def body() -> AsyncIterator[bytes]:
        yield b"part"
        raise ClientGone()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with scripted(script) as server, client() as upstream:
        with pytest.raises(ClientGone):
            await get(upstream, server.url, "POST", body())
        await wait_until(lambda: server.open == 0)


async def test_connect_refused_frees_its_place_under_the_cap() -> None:
    dead = URL(f"http://127.0.0.1:{free_port()}")
    async with client(max_per_origin=1) as upstream:
        for _ in range(2):  # a leaked place would make the second try wait, then time out
            with pytest.raises(UpstreamConnectError):
                await get(upstream, dead)
        assert upstream._pool(dead).open == 0


async def test_no_head_in_time_is_a_timeout_and_the_connection_is_dropped() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with scripted(script) as server, client() as upstream:
        with pytest.raises(UpstreamTimeout):
            await upstream.request("GET", server.url, "/", CIMultiDict(), None, None, 1.0, 0.2)
        await wait_until(lambda: server.open == 0)
        assert upstream._pool(server.url).open == 0


@pytest.mark.parametrize(
    "answer",
    [b"", b"HTTP/1.1 200 OK\r\nContent-Le", b"NOT HTTP AT ALL\r\n\r\n"],
    ids=["closed-before-head", "closed-mid-head", "garbage"],
)
async def test_broken_answers_before_the_head(answer: bytes) -> None:
    async with serving(answering(answer, keep_open=False)) as server, client() as upstream:
        with pytest.raises(UpstreamClosed):
            await get(upstream, server.url)
        assert upstream._pool(server.url).open == 0


async def test_an_endless_response_head_is_refused_not_buffered() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(2000):  # 2,000 headers of ~100 bytes: past the 64 KiB cap
            writer.write(b"X-Filler-%d: %s\r\n" % (i, b"v" * 90))
            if writer.is_closing():
                return
            await writer.drain()
        await reader.read()

    async with scripted(script) as server, client() as upstream:
        with pytest.raises(UpstreamClosed, match="response head over 65536 bytes"):
            await get(upstream, server.url)
        assert upstream._pool(server.url).open == 0


async def test_reset_mid_body_is_an_error_not_a_short_body() -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"
    async with serving(answering(cut, keep_open=False)) as server, client() as upstream:
        response = await get(upstream, server.url)
        assert await response.readany() == b"only part"
        with pytest.raises(UpstreamClosed):
            await response.readany()
        response.release()
        assert upstream._pool(server.url).open == 0


async def test_unread_body_on_release_closes_the_connection() -> None:
    long = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345"

    def first_long_then_ok(server: Scripted) -> Script:
        return answering(long if server.accepted == 1 else OK)(server)

    async with serving(first_long_then_ok) as server, client() as upstream:
        response = await get(upstream, server.url)
        response.release()  # e.g. a retried 503 whose body nobody wants
        again = await get(upstream, server.url)
        assert await read_all(again) == b"ok"
        again.release()
        assert server.accepted == 2


async def test_the_cap_makes_a_try_wait_for_a_free_connection() -> None:
    async with serving(answering(OK, OK)) as server, client(max_per_origin=1) as upstream:
        first = await get(upstream, server.url)
        second = asyncio.ensure_future(get(upstream, server.url))
        await wait_until(lambda: len(upstream._pool(server.url).waiters) == 1)
        assert not second.done()
        assert await read_all(first) == b"ok"
        first.release()
        response = await second
        assert await read_all(response) == b"ok"
        response.release()
        assert server.accepted == 1


async def test_waiting_for_a_connection_is_bounded_by_the_head_deadline() -> None:
    async with serving(answering(OK)) as server, client(max_per_origin=1) as upstream:
        held = await get(upstream, server.url)
        with pytest.raises(UpstreamTimeout):
            await upstream.request("GET", server.url, "/", CIMultiDict(), None, None, 1.0, 0.2)
        assert not upstream._pool(server.url).waiters
        held.release()


async def test_a_slow_reader_pauses_the_upstream_instead_of_buffering_everything() -> None:
    # 64 MiB: more than loopback's socket buffers can hold (autotuned up to 32 + 4 MiB here),
    # so the server can only finish once the client reads.
    chunk, chunks = b"x" * (1 << 20), 64
    sent = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(chunk) * chunks))
        for _ in range(chunks):
            writer.write(chunk)
            await writer.drain()
        sent.set()
        await reader.read()

    async with scripted(script) as server, client() as upstream:
        response = await get(upstream, server.url)
        await wait_until(lambda: response._paused)
        assert response._buffered < 1024 * 1024  # paused near the high-water mark
        assert not sent.is_set()  # TCP flow control holds the server back
        received = 0
        while part := await response.readany():
            received += len(part)
        assert received == len(chunk) * chunks and sent.is_set()
        response.release()


async def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    async with serving(answering(OK)) as server, client(idle_timeout_s=0.1) as upstream:
        response = await get(upstream, server.url)
        await read_all(response)
        response.release()
        assert server.open == 1
        await wait_until(lambda: server.open == 0, timeout_s=5)
        assert upstream._pool(server.url).open == 0


async def test_a_connection_idle_past_the_timeout_is_never_reused() -> None:
    async with serving(answering(OK)) as server, client(idle_timeout_s=0.05) as upstream:
        response = await get(upstream, server.url)
        await read_all(response)
        response.release()
        [conn] = upstream._pool(server.url).idle
        loop = asyncio.get_running_loop()
        await wait_until(lambda: loop.time() - conn.idle_since > 0.05)
        again = await get(upstream, server.url)  # whether or not a sweep ran meanwhile
        assert await read_all(again) == b"ok"
        again.release()
        assert server.accepted == 2


async def test_retain_closes_idle_connections_to_removed_backends() -> None:
    async with serving(answering(OK)) as server, client() as upstream:
        response = await get(upstream, server.url)
        await read_all(response)
        response.release()
        upstream.retain(set())
        await wait_until(lambda: server.open == 0)


async def test_a_header_value_with_a_line_break_is_refused() -> None:
    async with serving(answering(OK)) as server, client() as upstream:
        with pytest.raises(UpstreamClosed):
            await get(upstream, server.url, **{"X-Evil": "a\r\nInjected: 1"})
        response = await get(upstream, server.url)  # the connection was not spoiled
        assert await read_all(response) == b"ok"
        response.release()
        assert server.requests and b"Injected" not in server.requests[0]


async def test_a_chunked_body_on_a_bodiless_method_goes_out_with_a_length() -> None:
    received: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await read_head(reader))
        received.append(await reader.readexactly(5))
        writer.write(OK)
        await writer.drain()
        await reader.read()

    async def body() -> AsyncIterator[bytes]:
        yield b"hel"
        yield b"lo"

    async with scripted(script) as server, client() as upstream:
        response = await get(upstream, server.url, "GET", body())
        assert await read_all(response) == b"ok"
        response.release()
    head = received[0].lower()
    assert b"content-length: 5" in head and b"transfer-encoding" not in head
    assert received[1] == b"hello"


@pytest.mark.parametrize("status", [400, 408, 413, 431])
async def test_an_answer_that_rejects_the_request_framing_is_never_reused(status: int) -> None:
    rejected = b"HTTP/1.1 %d No\r\nContent-Length: 2\r\n\r\nno" % status

    def first_rejects(server: Scripted) -> Script:
        return answering(rejected if server.accepted == 1 else OK)(server)

    async with serving(first_rejects) as server, client() as upstream:
        response = await get(upstream, server.url)
        assert (response.status, await read_all(response)) == (status, b"no")
        response.release()
        assert len(upstream._pool(server.url).idle) == 0
        response = await get(upstream, server.url)
        assert response.status == 200
        response.release()
        assert server.accepted == 2  # a fresh connection, not the one in doubt


async def test_time_waiting_for_the_client_body_is_not_the_upstreams() -> None:
    """A body that outlasts the head deadline: the deadline runs from the end of the body."""
    client_sent = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await reader.readexactly(len(b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"))
        writer.write(OK)
        await writer.drain()
        await reader.read()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"abc"
        await client_sent.wait()  # the client takes its time, past the 0.2 s head deadline
        yield b"def"

    async def release_after_the_deadline() -> None:
        await asyncio.sleep(0.5)  # the client's pace is what is under test
        client_sent.set()

    async with scripted(script) as server, client() as upstream:
        pacing = asyncio.create_task(release_after_the_deadline())
        response = await upstream.request(
            "POST", server.url, "/", CIMultiDict(), slow_body(), None, 1.0, 0.2
        )
        await pacing
        assert (response.status, await read_all(response)) == (200, b"ok")
        response.release()


async def test_a_backend_that_stops_reading_the_body_still_times_out() -> None:
    done = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await done.wait()  # never reads the body nor answers: back-pressure stalls the writer

    async def big_body() -> AsyncIterator[bytes]:
        for _ in range(1000):
            yield b"x" * 65536

    async with scripted(script) as server, client() as upstream:
        with pytest.raises(UpstreamTimeout):
            await upstream.request(
                "POST", server.url, "/", CIMultiDict(), big_body(), None, 1.0, 0.3
            )
        done.set()
