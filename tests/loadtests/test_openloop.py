import asyncio
import random

from aiohttp import web

from loadtests.fakepod import build_app
from loadtests.openloop import CONN_ERROR, Target, run_open_loop
from loadtests.procs import free_port
from loadtests.schedule import poisson_arrivals


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def test_open_loop_records_every_request_and_fires_events() -> None:
    app = build_app("a", slots=2, service_s=0.005, sigma=0.0, seed=1)
    runner, url = await _serve(app)
    fired = asyncio.Event()

    async def inject() -> None:
        fired.set()

    try:
        arrivals = poisson_arrivals(200.0, 0.5, random.Random(2))
        rec = await run_open_loop(Target([url]), arrivals, 0.5, events=[(0.1, inject)])
    finally:
        await runner.cleanup()
    assert fired.is_set()
    assert len(rec.status) == len(arrivals) > 50
    assert all(s == 200 for s in rec.status)
    assert min(rec.latency_s) >= 0.005
    assert rec.summary().count == len(arrivals)


async def test_arrivals_do_not_wait_for_slow_answers_and_failures_are_recorded() -> None:
    app = build_app("slow", slots=1, service_s=0.2, sigma=0.0)
    runner, url = await _serve(app)
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        arrivals = [0.0, 0.01, 0.02, 0.03]
        rec = await run_open_loop(
            Target([url, dead], timeout_s=2.0), arrivals, 0.05, lambda i: i % 2
        )
    finally:
        await runner.cleanup()
    # one slot and 200 ms service: the second request to the pod queues behind the first,
    # but it was still *sent* on schedule (open loop), so its lag stays small
    assert rec.status[0] == rec.status[2] == 200
    assert rec.status[1] == rec.status[3] == CONN_ERROR
    assert max(rec.lag_s) < 0.05
    assert rec.latency_s[2] > 0.3
    assert rec.summary().errors == 2
