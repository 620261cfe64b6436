"""The listener's own CPU time per request (a benchmark, not a test).

    python -m loadtests.bench_listener [--requests 5000] [--repeats 10] [--baseline FILE]

One kept-alive connection on an in-memory transport: each request's bytes go to the protocol's
``data_received``, aiohttp parses them and hands them to a handler that answers at once, and the
next request is sent once the answer is written. No socket and no load generator compete for
the CPU, so the figure (this process's CPU time per request, the event loop's turns included)
moves far less on a shared machine than a closed-loop throughput. ``--baseline`` names another
checkout's ``gateway/listener.py``: it is timed in alternation with this one, in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from aiohttp import web

import gateway.listener
from gateway.process import run_loop

HEADER_TIMEOUT_S = 10.0  # the default timeouts.request_header
REQUEST = b"GET /v1/models HTTP/1.1\r\nHost: tailgate\r\n\r\n"


class MemoryTransport(asyncio.Transport):
    """Counts what the server writes; the socket calls aiohttp makes are no-ops."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes += 1

    def writelines(self, list_of_data: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def answer(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(body=b"ok")


async def cpu_per_request_s(listener: ModuleType, requests: int) -> float:
    server = listener.GatewayServer(answer, header_timeout_s=HEADER_TIMEOUT_S, access_log=None)
    protocol = server()
    transport = MemoryTransport()
    protocol.connection_made(transport)
    await asyncio.sleep(0)
    started_s = time.process_time()
    for _ in range(requests):
        written = transport.writes
        protocol.data_received(REQUEST)
        while transport.writes == written:
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the connection goes back to waiting for the next request
    elapsed_s = time.process_time() - started_s
    protocol.connection_lost(None)
    return elapsed_s / requests


def load_listener(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("baseline_listener", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def compare(
    listeners: dict[str, ModuleType], requests: int, repeats: int
) -> dict[str, list[float]]:
    for listener in listeners.values():
        await cpu_per_request_s(listener, requests // 10)  # warm up
    runs: dict[str, list[float]] = {name: [] for name in listeners}
    for _ in range(repeats):  # alternating, so drift in the machine's load hits both alike
        for name, listener in listeners.items():
            runs[name].append(await cpu_per_request_s(listener, requests))
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per run")
    parser.add_argument("--repeats", type=int, default=10, help="runs of each listener")
    parser.add_argument("--baseline", type=Path, help="another checkout's gateway/listener.py")
    args = parser.parse_args(argv)
    listeners = {"this": gateway.listener}
    if args.baseline is not None:
        listeners["baseline"] = load_listener(args.baseline)
    runs = run_loop(compare(listeners, args.requests, args.repeats), use_uvloop=True)
    for name, per_request_s in runs.items():
        print(
            f"{name:>8}: median {statistics.median(per_request_s) * 1e6:6.2f} us/request, "
            f"min {min(per_request_s) * 1e6:6.2f} "
            f"({args.repeats} runs of {args.requests} requests)"
        )


if __name__ == "__main__":
    main()
