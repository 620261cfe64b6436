"""A flooding tenant against a well-behaved one, on one saturated fake pod.

    python -m loadtests.tenants --duration 20s

Two phases on the same gateway and pod (both real processes):

1. *unloaded*: the well-behaved tenant alone (``standard`` and ``critical`` requests);
2. *flood*: the same traffic again, plus a tenant sending at about twice the pod's capacity
   with most of it ``sheddable``;
3. the flood again without tenant and priority headers: one anonymous FIFO, the old queue;

then, on a pod of 2 slots, the well-behaved tenant's requests one after another, alone and
beside 30 flood requests kept in flight (p90 target: at most 4x alone).

Reports the well-behaved tenant's p50 / p99 in both phases (target: p99 under the flood at
most 2x unloaded) and, per class, how many requests were sent, served and shed (target:
no ``critical`` request shed; ``sheddable`` ones take the refusals).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from loadtests import procs
from loadtests.stats import percentile

SLOTS = 4
SERVICE_MS = 100.0
CAPACITY_RPS = SLOTS * 1000 / SERVICE_MS  # 40 requests a second


@dataclass(frozen=True)
class Stream:
    """Poisson arrivals of one tenant's requests of one class."""

    tenant: str
    priority: str
    rate_rps: float


POLITE = (Stream("polite", "standard", 4.0), Stream("polite", "critical", 2.0))
FLOOD = (
    Stream("flood", "standard", 0.6 * CAPACITY_RPS),
    Stream("flood", "sheddable", 1.2 * CAPACITY_RPS),
)


@dataclass
class Result:
    tenant: str
    priority: str
    status: int
    latency_s: float


def schedule(
    streams: tuple[Stream, ...], duration_s: float, seed: int
) -> list[tuple[float, Stream]]:
    rng = random.Random(seed)
    arrivals = []
    for stream in streams:
        at = rng.expovariate(stream.rate_rps)
        while at < duration_s:
            arrivals.append((at, stream))
            at += rng.expovariate(stream.rate_rps)
    return sorted(arrivals, key=lambda pair: pair[0])


async def _send(
    session: aiohttp.ClientSession, url: str, stream: Stream, tagged: bool, out: list[Result]
) -> None:
    headers = {"X-Tenant": stream.tenant, "X-Priority": stream.priority} if tagged else {}
    sent = time.perf_counter()
    status = -1
    try:
        async with session.post(
            url, json={"prompt": "hello", "max_tokens": 16}, headers=headers
        ) as r:
            await r.read()
            status = r.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        status = -1
    out.append(Result(stream.tenant, stream.priority, status, time.perf_counter() - sent))


async def run_phase(
    url: str, streams: tuple[Stream, ...], duration_s: float, seed: int, tagged: bool = True
) -> list[Result]:
    """``tagged`` False sends no tenant or priority headers: one anonymous FIFO, as before."""
    out: list[Result] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:
        start = time.perf_counter()
        tasks = []
        for at, stream in schedule(streams, duration_s, seed):
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_send(session, url, stream, tagged, out)))
        await asyncio.gather(*tasks)
    return out


def gateway_config(pod_port: int, port: int, admin_port: int, slots: int) -> str:
    return (
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"admin: {{host: 127.0.0.1, port: {admin_port}}}\n"
        f"backends: [{{url: 'http://127.0.0.1:{pod_port}', name: pod}}]\n"
        f"limits: {{max_requests_per_backend: {slots}, max_pending: 256, queue_timeout: 5s}}\n"
        "health_check: {enabled: false}\n"
        "logging: {access_log: false}\n"
    )


@contextlib.contextmanager
def pod_and_gateway(slots: int, log_dir: Path) -> Iterator[str]:
    """A fake pod of ``slots`` x SERVICE_MS (core 1) behind a gateway (core 0): its URL."""
    pod_port, port, admin_port = procs.free_ports(3)
    config = log_dir / f"gateway-{slots}.yaml"
    config.write_text(gateway_config(pod_port, port, admin_port, slots))
    py = sys.executable
    pod_cmd = [py, "-m", "loadtests.fakepod", "--port", str(pod_port), "--slots", str(slots)]
    pod_cmd += ["--service-ms", str(SERVICE_MS), "--dist", "fixed", "--name", "pod"]
    children = [procs.start(f"pod-{slots}", pod_cmd, "1", log_dir)]
    try:
        children[0].wait_http(f"http://127.0.0.1:{pod_port}/ready")
        gw_cmd = [py, "-m", "gateway", "serve", "--config", str(config)]
        children.append(procs.start(f"gateway-{slots}", gw_cmd, "0", log_dir))
        children[1].wait_http(f"http://127.0.0.1:{admin_port}/readyz")
        yield f"http://127.0.0.1:{port}/v1/completions"
    finally:
        procs.stop_all(children)


async def closed_loop_flood(url: str, in_flight: int, polite: int) -> list[Result]:
    """``in_flight`` flood requests kept outstanding while the polite tenant sends ``polite``
    requests one after another (the issue's case: 2 slots, 30 in flight)."""
    out: list[Result] = []
    flood_out: list[Result] = []
    stop = asyncio.Event()
    flood = Stream("flood", "standard", 0.0)
    calm = Stream("polite", "standard", 0.0)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def flood_worker() -> None:
            while not stop.is_set():
                await _send(session, url, flood, True, flood_out)

        workers = [asyncio.create_task(flood_worker()) for _ in range(in_flight)]
        await asyncio.sleep(1.0)  # the flood's queue fills (a benchmark, not a test)
        for _ in range(polite):
            await _send(session, url, calm, True, out)
        stop.set()
        await asyncio.gather(*workers)
    return out


def polite_latencies(results: list[Result]) -> list[float]:
    return sorted(r.latency_s for r in results if r.tenant == "polite" and r.status == 200)


def class_table(results: list[Result]) -> list[str]:
    sent = Counter(r.priority for r in results)
    served = Counter(r.priority for r in results if r.status == 200)
    shed = Counter(r.priority for r in results if r.status in (429, 503))
    lines = ["| class | sent | served | shed (503) | other errors |", "|---|--:|--:|--:|--:|"]
    for cls in ("critical", "standard", "sheddable"):
        other = sent[cls] - served[cls] - shed[cls]
        lines.append(f"| {cls} | {sent[cls]} | {served[cls]} | {shed[cls]} | {other} |")
    return lines


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.0f}" if values else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", default="20s", help="each open-loop phase, e.g. 20s")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    duration_s = float(args.duration.rstrip("s"))
    log_dir = Path(tempfile.mkdtemp(prefix="tailgate-tenants-"))
    with pod_and_gateway(SLOTS, log_dir) as url:
        unloaded = asyncio.run(run_phase(url, POLITE, duration_s, args.seed))
        flood = asyncio.run(run_phase(url, POLITE + FLOOD, duration_s, args.seed + 1))
        untagged = asyncio.run(run_phase(url, POLITE + FLOOD, duration_s, args.seed + 1, False))
    with pod_and_gateway(2, log_dir) as url:
        alone = asyncio.run(closed_loop_flood(url, 0, 50))
        crowded = asyncio.run(closed_loop_flood(url, 30, 50))
    offered = sum(s.rate_rps for s in POLITE + FLOOD)
    print(
        f"Open loop: pod of {SLOTS} slots x {SERVICE_MS:.0f} ms (capacity {CAPACITY_RPS:.0f} "
        f"rps), phases of {duration_s:.0f} s, {offered:.0f} rps offered under the flood."
    )
    print("| well-behaved tenant | p50 ms | p99 ms | served | errors |")
    print("|---|--:|--:|--:|--:|")
    for label, results in (
        ("unloaded", unloaded),
        ("under the flood", flood),
        ("under the flood, no headers (one FIFO, as before)", untagged),
    ):
        lat = polite_latencies(results)
        errors = sum(1 for r in results if r.tenant == "polite" and r.status != 200)
        print(f"| {label} | {ms(lat, 50)} | {ms(lat, 99)} | {len(lat)} | {errors} |")
    calm_p99 = percentile(polite_latencies(unloaded), 99)
    busy_p99 = percentile(polite_latencies(flood), 99)
    print(f"\np99 under the flood / unloaded: {busy_p99 / calm_p99:.2f} (target <= 2)\n")
    print("\n".join(class_table(flood)))
    a, c = polite_latencies(alone), polite_latencies(crowded)
    print(f"\nClosed loop: pod of 2 slots x {SERVICE_MS:.0f} ms, 30 flood requests in flight.")
    print("| well-behaved tenant, 50 requests in turn | p50 ms | p90 ms | p99 ms |")
    print("|---|--:|--:|--:|")
    print(f"| alone | {ms(a, 50)} | {ms(a, 90)} | {ms(a, 99)} |")
    print(f"| beside the flood | {ms(c, 50)} | {ms(c, 90)} | {ms(c, 99)} |")
    ratio = percentile(c, 90) / percentile(a, 90)
    print(f"\np90 beside the flood / alone: {ratio:.2f} (target <= 4)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
