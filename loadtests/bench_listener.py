"""The listener's own cost: wrk against a GatewayServer whose handler answers at once (a
benchmark, not a test).

    python -m loadtests.bench_listener [--duration 5] [--connections 32] [--repeats 3]

Nothing but the listener is on the path (no routing, no upstream): the rows compare versions
of ``gateway/listener.py`` run back to back on one machine (set ``PYTHONPATH`` to each
checkout), not tailgate against another proxy. The server runs on uvloop in this process, wrk
(one thread, keep-alive connections) in a child process. Besides wrk's figures it prints the
server's CPU time per request (this process's, wrk's own excluded), which a machine shared with
other work disturbs far less than throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass

from aiohttp import web

from gateway.listener import GatewayServer
from gateway.process import run_loop
from loadtests.wrk import WrkResult, parse_output

HEADER_TIMEOUT_S = 10.0  # the default timeouts.request_header


async def answer(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(body=b"ok")


@dataclass(frozen=True)
class ListenerRun:
    wrk: WrkResult
    cpu_per_request_s: float


async def measure(duration_s: int, connections: int) -> ListenerRun:
    server = GatewayServer(answer, header_timeout_s=HEADER_TIMEOUT_S, access_log=None)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    try:
        cpu_before_s = time.process_time()
        wrk = await asyncio.create_subprocess_exec(
            *("wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency"),
            f"http://127.0.0.1:{port}/",
            stdout=asyncio.subprocess.PIPE,
        )
        output, _ = await asyncio.wait_for(wrk.communicate(), duration_s + 30)
        cpu_s = time.process_time() - cpu_before_s
        result = parse_output(output.decode())
        return ListenerRun(result, cpu_s / max(result.requests, 1))
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    results = [
        run_loop(measure(args.duration, args.connections), use_uvloop=True)
        for _ in range(args.repeats)
    ]
    for run in results:
        print(
            f"{run.wrk.requests_per_s:10,.0f} rps  p50 {run.wrk.p50_s * 1e3:6.2f} ms  "
            f"p99 {run.wrk.p99_s * 1e3:6.2f} ms  errors {run.wrk.errors}  "
            f"server CPU {run.cpu_per_request_s * 1e6:5.1f} us/request"
        )
    rps = statistics.median(run.wrk.requests_per_s for run in results)
    cpu_us = statistics.median(run.cpu_per_request_s for run in results) * 1e6
    print(f"median over {args.repeats} runs of {args.duration} s: {rps:,.0f} rps, {cpu_us:.1f} us")


if __name__ == "__main__":
    main()
