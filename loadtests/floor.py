"""The floor of tailgate's architecture, run as a peer of the overhead rows (``aiohttp floor``).

    python -m loadtests.floor --port 8080 --backend http://127.0.0.1:9000

aiohttp's low-level ``web.Server`` and tailgate's own :class:`gateway.upstream.UpstreamClient`,
and nothing else: read the body, forward it to the one backend, stream the answer back. No
routing, balancing, admission, retries, metrics, tracing or logging. Whatever tailgate spends
per request above this process is the request path's own cost; what this process spends above
``direct`` is aiohttp's server, the upstream client and the interpreter. A row of this peer
next to tailgate's and Envoy's in one run says how far the request path can go before the
listener itself is what stands in the way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import uvloop
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.upstream import UpstreamClient, UpstreamError

# The framing is the upstream client's and the server's own, hop by hop (RFC 9110 7.6.1).
_REQUEST_SKIP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})
_RESPONSE_SKIP = _REQUEST_SKIP
_MAX_PER_ORIGIN = 512
_IDLE_TIMEOUT_S = 60.0
_CONNECT_TIMEOUT_S = 1.0
_HEAD_TIMEOUT_S = 5.0


def forwarder(client: UpstreamClient, backend: URL) -> web.Server:
    """A low-level aiohttp server that forwards every request to ``backend``."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _REQUEST_SKIP
        )
        try:
            upstream = await client.request(
                request.method, backend, request.path_qs, headers, body, len(body),
                _CONNECT_TIMEOUT_S, _HEAD_TIMEOUT_S,
            )  # fmt: skip
        except UpstreamError as exc:
            return web.json_response({"error": f"upstream: {type(exc).__name__}"}, status=502)
        try:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _RESPONSE_SKIP:
                    response.headers.add(key, value)
            await response.prepare(request)
            while chunk := await upstream.readany():
                await response.write(chunk)
            await response.write_eof()
        finally:
            upstream.release()
        return response

    return web.Server(handle)


async def serve(port: int, backend: URL) -> None:
    client = UpstreamClient(_MAX_PER_ORIGIN, _IDLE_TIMEOUT_S)
    runner = web.ServerRunner(forwarder(client, backend), handle_signals=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await client.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m loadtests.floor", description=__doc__)
    p.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT")
    p.add_argument("--backend", required=True, help="the one backend, e.g. http://127.0.0.1:9000")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt, web.GracefulExit):  # SIGTERM: a clean stop
        uvloop.run(serve(args.port, URL(args.backend)))


if __name__ == "__main__":
    main()
