"""A fake inference pod: real HTTP, a fixed number of slots, a queue, and faults set at run time.

It stands in for vLLM/TGI/tailgate-backend in tests and loadtests where what matters is how a
pod *behaves* under load (service time, queueing, errors, hangs, pauses), not what it computes.

    python -m loadtests.fakepod --port 8001 --slots 4 --service-ms 20 --name a

Faults are changed while it runs with ``POST /_control`` and a JSON body, e.g.
``{"error_rate": 1.0}``, ``{"hang": true}``, ``{"slow_factor": 5}``, ``{"ready": false}``,
``{"pause_every_s": 2, "pause_for_s": 0.5}``, ``{"reported_depth": 50}``, ``{"release": true}``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import signal
import time
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


def lognormal_mu(mean: float, sigma: float) -> float:
    """The ``mu`` of a lognormal with this ``sigma`` whose mean is ``mean``: service times are
    specified by their mean, and every model of the fake pods draws them the same way."""
    return math.log(mean) - sigma**2 / 2


@dataclass
class Faults:
    """Run-time behaviour knobs; all off by default."""

    error_rate: float = 0.0
    error_status: int = 500
    hang: bool = False
    slow_factor: float = 1.0
    pause_every_s: float = 0.0
    pause_for_s: float = 0.0
    ready: bool = True
    reported_depth: float | None = None


@dataclass
class PodState:
    name: str
    slots: int
    max_queue: int
    service_s: float
    sigma: float
    dist: str
    rng: random.Random
    faults: Faults = field(default_factory=Faults)
    waiting: int = 0
    running: int = 0
    served: int = 0
    started: float = field(default_factory=time.monotonic)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    semaphore: asyncio.Semaphore | None = None

    def depth(self) -> float:
        if self.faults.reported_depth is not None:
            return self.faults.reported_depth
        return self.waiting + self.running

    def service_time(self) -> float:
        base = self.service_s * self.faults.slow_factor
        if self.dist == "fixed" or self.sigma <= 0:
            return base
        if self.dist == "bimodal":
            return base * (8.0 if self.rng.random() < 0.1 else 0.3)
        return self.rng.lognormvariate(lognormal_mu(base, self.sigma), self.sigma)

    def pause_left(self) -> float:
        return pause_left(self.faults, time.monotonic() - self.started)


def pause_left(faults: Faults, elapsed_s: float) -> float:
    """Seconds left of the current pause ``elapsed_s`` after start (0 when not paused):
    the pod works ``pause_every_s``, then stalls ``pause_for_s``, over and over."""
    if faults.pause_every_s <= 0 or faults.pause_for_s <= 0:
        return 0.0
    period = faults.pause_every_s + faults.pause_for_s
    phase = elapsed_s % period
    return 0.0 if phase < faults.pause_every_s else period - phase


STATE = web.AppKey("state", PodState)


def _headers(state: PodState) -> dict[str, str]:
    return {"X-Queue-Depth": f"{state.depth():g}", "X-Pod": state.name}


async def _serve_slot(request: web.Request) -> web.StreamResponse | None:
    """Queue for a slot, apply faults and service time; return an error response or None."""
    state = request.app[STATE]
    assert state.semaphore is not None
    if state.waiting >= state.max_queue:
        return web.json_response(
            {"error": {"message": "queue full", "type": "overloaded"}},
            status=503,
            headers={**_headers(state), "Retry-After": "1"},
        )
    state.waiting += 1
    try:
        await state.semaphore.acquire()
    finally:
        state.waiting -= 1
    state.running += 1
    try:
        if state.faults.hang:
            await asyncio.Event().wait()  # until the client gives up
        pause = state.pause_left()
        if pause > 0:
            await asyncio.sleep(pause)
        await asyncio.sleep(state.service_time())
        if state.faults.error_rate > 0 and state.rng.random() < state.faults.error_rate:
            return web.json_response(
                {"error": {"message": "injected failure", "type": "server_error"}},
                status=state.faults.error_status,
                headers=_headers(state),
            )
        return None
    finally:
        state.running -= 1
        state.served += 1
        state.semaphore.release()


async def infer(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await request.read()
    error = await _serve_slot(request)
    if error is not None:
        return error
    stream = False
    if body:
        try:
            payload = json.loads(body)
            stream = bool(payload.get("stream")) if isinstance(payload, dict) else False
        except ValueError:
            pass
    if not stream:
        return web.json_response(
            {"backend": state.name, "object": "text_completion", "choices": [{"text": "ok"}]},
            headers=_headers(state),
        )
    response = web.StreamResponse(headers={**_headers(state), "Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(3):
        chunk = {"backend": state.name, "choices": [{"index": 0, "text": f"t{i}"}]}
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def echo(request: web.Request) -> web.Response:
    """Describe the request as received, for header and forwarding tests."""
    body = await request.read()
    return web.json_response(
        {
            "backend": request.app[STATE].name,
            "method": request.method,
            "path": request.path,
            "path_qs": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        },
        headers={**_headers(request.app[STATE]), "Connection": "keep-alive, X-Hop", "X-Hop": "1"},
    )


async def upload(request: web.Request) -> web.Response:
    """Consume a body chunk by chunk (never holding it) and report its size and digest."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"body_len": size, "body_sha256": digest.hexdigest()})


async def download(request: web.Request) -> web.StreamResponse:
    """Stream ``size`` bytes of a repeating pattern without holding them."""
    size = int(request.query.get("size", "1048576"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    block = bytes(range(256)) * 256
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        await response.write(piece)
        sent += len(piece)
    await response.write_eof()
    return response


async def gated_stream(request: web.Request) -> web.StreamResponse:
    """One SSE event, then wait until ``/_control {"release": true}``, then the rest."""
    state = request.app[STATE]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b'data: {"n": 1}\n\n')
    await state.gate.wait()
    state.gate.clear()
    await response.write(b'data: {"n": 2}\n\n')
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    return web.json_response({"status": code}, status=code, headers=_headers(request.app[STATE]))


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, headers=_headers(request.app[STATE]))


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ok = state.faults.ready and not state.faults.hang
    return web.json_response({"ready": ok}, status=200 if ok else 503, headers=_headers(state))


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    registry = CollectorRegistry()
    Gauge("tailgate_backend_queue_depth", "Requests waiting", registry=registry).set(
        state.faults.reported_depth if state.faults.reported_depth is not None else state.waiting
    )
    Gauge("tailgate_backend_running_requests", "Requests running", registry=registry).set(
        0 if state.faults.reported_depth is not None else state.running
    )
    Counter("fakepod_served", "Requests served", registry=registry).inc(state.served)
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def control(request: web.Request) -> web.Response:
    state = request.app[STATE]
    changes = await request.json()
    for key, value in changes.items():
        if key == "release":
            state.gate.set()
        elif hasattr(state.faults, key):
            setattr(state.faults, key, value)
        else:
            return web.json_response({"error": {"message": f"unknown fault {key}"}}, status=400)
    return web.json_response({"faults": state.faults.__dict__, "served": state.served})


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {
            "name": state.name,
            "served": state.served,
            "waiting": state.waiting,
            "running": state.running,
        }
    )


def build_app(
    name: str = "pod",
    slots: int = 4,
    max_queue: int = 1024,
    service_s: float = 0.0,
    sigma: float = 0.0,
    dist: str = "lognormal",
    seed: int | None = None,
) -> web.Application:
    state = PodState(name, slots, max_queue, service_s, sigma, dist, random.Random(seed))
    state.semaphore = asyncio.Semaphore(slots)
    app = web.Application(client_max_size=1 << 30)
    app[STATE] = state
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/_control", control)
    app.router.add_get("/_stats", stats)
    app.router.add_route("*", "/echo{tail:.*}", echo)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_get("/gated-stream", gated_stream)
    app.router.add_route("*", "/status/{code:\\d{3}}", status)
    app.router.add_route("*", "/{tail:.*}", infer)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--name", default=None)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--max-queue", type=int, default=1024)
    parser.add_argument("--service-ms", type=float, default=20.0)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--dist", choices=["lognormal", "fixed", "bimodal"], default="lognormal")
    parser.add_argument("--slow-factor", type=float, default=1.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    async def run() -> None:
        app = build_app(
            args.name or f"pod-{args.port}",
            args.slots,
            args.max_queue,
            args.service_ms / 1000,
            args.sigma,
            args.dist,
            args.seed,
        )
        app[STATE].faults.slow_factor = args.slow_factor
        app[STATE].faults.error_rate = args.error_rate
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port, reuse_address=True)
        await site.start()
        print(f"fakepod {app[STATE].name} listening on http://{args.host}:{args.port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(run())


if __name__ == "__main__":
    main()
