"""A flooding tenant against a well-behaved one, on one saturated fake pod.

    python -m loadtests.tenants --duration 20s

Two phases on the same gateway and pod (both real processes):

1. *unloaded*: the well-behaved tenant alone (``standard`` and ``critical`` requests);
2. *flood*: the same traffic again, plus a tenant sending at about twice the pod's capacity
   with most of it ``sheddable``;
3. the flood again without tenant and priority headers: one anonymous FIFO, the old queue.

Reports the well-behaved tenant's p50 / p99 in both phases (target: p99 under the flood at
most 2x unloaded) and, per class, how many requests were sent, served and shed (target:
no ``critical`` request shed; ``sheddable`` ones take the refusals).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
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


def gateway_config(pod_port: int, port: int, admin_port: int) -> str:
    return (
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"admin: {{host: 127.0.0.1, port: {admin_port}}}\n"
        f"backends: [{{url: 'http://127.0.0.1:{pod_port}', name: pod}}]\n"
        f"limits: {{max_requests_per_backend: {SLOTS}, max_pending: 256, queue_timeout: 5s}}\n"
        "health_check: {enabled: false}\n"
        "logging: {access_log: false}\n"
    )


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", default="20s", help="each phase, e.g. 20s")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    duration_s = float(args.duration.rstrip("s"))
    pod_port, port, admin_port = procs.free_ports(3)
    log_dir = Path(tempfile.mkdtemp(prefix="tailgate-tenants-"))
    config = log_dir / "gateway.yaml"
    config.write_text(gateway_config(pod_port, port, admin_port))
    py = sys.executable
    pod_cmd = [
        py,
        "-m",
        "loadtests.fakepod",
        "--port",
        str(pod_port),
        "--slots",
        str(SLOTS),
        "--service-ms",
        str(SERVICE_MS),
        "--dist",
        "fixed",
        "--name",
        "pod",
    ]
    children = [procs.start("pod", pod_cmd, "1", log_dir)]
    try:
        children[0].wait_http(f"http://127.0.0.1:{pod_port}/ready")
        gw_cmd = [py, "-m", "gateway", "serve", "--config", str(config)]
        children.append(procs.start("gateway", gw_cmd, "0", log_dir))
        children[1].wait_http(f"http://127.0.0.1:{admin_port}/readyz")
        url = f"http://127.0.0.1:{port}/v1/completions"
        unloaded = asyncio.run(run_phase(url, POLITE, duration_s, args.seed))
        flood = asyncio.run(run_phase(url, POLITE + FLOOD, duration_s, args.seed + 1))
        untagged = asyncio.run(run_phase(url, POLITE + FLOOD, duration_s, args.seed + 1, False))
    finally:
        procs.stop_all(children)
    calm, busy = polite_latencies(unloaded), polite_latencies(flood)
    calm_p99, busy_p99 = percentile(calm, 99), percentile(busy, 99)
    polite_errors = sum(1 for r in flood if r.tenant == "polite" and r.status != 200)
    print(
        f"pod: {SLOTS} slots x {SERVICE_MS:.0f} ms (capacity {CAPACITY_RPS:.0f} rps); "
        f"phases of {duration_s:.0f} s; offered under the flood: "
        f"{sum(s.rate_rps for s in POLITE + FLOOD):.0f} rps"
    )
    print("| well-behaved tenant | p50 ms | p99 ms | served | errors |")
    print("|---|--:|--:|--:|--:|")
    print(
        f"| unloaded | {percentile(calm, 50) * 1000:.0f} | {calm_p99 * 1000:.0f} | "
        f"{len(calm)} | 0 |"
    )
    print(
        f"| under the flood | {percentile(busy, 50) * 1000:.0f} | {busy_p99 * 1000:.0f} | "
        f"{len(busy)} | {polite_errors} |"
    )
    fifo = polite_latencies(untagged)
    fifo_errors = sum(1 for r in untagged if r.tenant == "polite" and r.status != 200)
    print(
        f"| under the flood, no headers (one FIFO) | {percentile(fifo, 50) * 1000:.0f} | "
        f"{percentile(fifo, 99) * 1000:.0f} | {len(fifo)} | {fifo_errors} |"
    )
    print(f"p99 ratio {busy_p99 / calm_p99:.2f} (target <= 2)")
    print("\n".join(class_table(flood)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
