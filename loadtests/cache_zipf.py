"""The response cache under a Zipf mix of repeated deterministic prompts, with and without it.

    python -m loadtests.cache_zipf --rate 100 --duration 20
    python -m loadtests.cache_zipf --backend-url http://127.0.0.1:8000   # any OpenAI backend
    python -m loadtests.cache_zipf --backend-cmd 'tailgate-backend --preset tiny --port {port}'

One backend, started once (``--backend-cmd``, ``{port}`` filled in) or already running
(``--backend-url``), then one ``tailgate serve`` per mode in front of it: ``cache.enabled``
false, then true, on the same seeded request sequence at the same open-loop Poisson rate.
Popular prompts repeat as they do in real traffic (rank ``k`` drawn with weight ``1/k^s``),
every request greedy (temperature 0). Reported per mode: hit rate (from the
``X-Tailgate-Cache`` header), the requests the backend received (the gateway's own count of
upstream tries), how many the cache saved, p50/p99 of every request (failures rank worst), and
the generator's p99 send lag (a mode is marked "generator behind" when it fell behind).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from loadtests import procs
from loadtests.openloop import CONN_ERROR, TIMEOUT, Recording
from loadtests.stats import Summary

DEFAULT_BACKEND = (
    f"{sys.executable} -m loadtests.fakepod --port {{port}} --slots 4 --service-ms 25 "
    "--sigma 0.5 --seed 7"
)


def zipf_ranks(count: int, distinct: int, exponent: float, rng: random.Random) -> list[int]:
    """``count`` ranks in ``[0, distinct)``, rank ``k`` with weight ``1 / (k + 1) ** exponent``."""
    cumulative = list(itertools.accumulate(1 / (k + 1) ** exponent for k in range(distinct)))
    return rng.choices(range(distinct), cum_weights=cumulative, k=count)


def request_body(rank: int, max_tokens: int) -> bytes:
    payload = {
        "model": "tiny",
        "prompt": f"Question {rank}: what is the capital of country number {rank}?",
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    return json.dumps(payload).encode()


def poisson_arrivals(rate_rps: float, duration_s: float, rng: random.Random) -> list[float]:
    arrivals, at = [], rng.expovariate(rate_rps)
    while at < duration_s:
        arrivals.append(at)
        at += rng.expovariate(rate_rps)
    return arrivals


@dataclass(frozen=True)
class ModeResult:
    cache: bool
    summary: Summary
    hits: int
    backend_requests: int
    lag_p99_s: float  # how late the generator sent (its own honesty check)
    behind_schedule: bool


def gateway_config(backend_url: str, port: int, admin_port: int, cache: bool) -> str:
    return (
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"admin: {{host: 127.0.0.1, port: {admin_port}}}\n"
        f"backends: [{{url: '{backend_url}', name: backend}}]\n"
        "logging: {access_log: false}\n"
        f"cache: {{enabled: {'true' if cache else 'false'}}}\n"
    )


async def _send(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    index: int,
    due: float,
    rec: Recording,
    verdicts: list[str],
) -> None:
    sent = time.perf_counter()
    status = CONN_ERROR
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            status = r.status
            verdicts[index] = r.headers.get("X-Tailgate-Cache", "-")
    except TimeoutError:
        status = TIMEOUT
    except (aiohttp.ClientError, OSError):
        status = CONN_ERROR
    rec.latency_s[index] = time.perf_counter() - sent
    rec.status[index] = status
    rec.lag_s[index] = sent - due


async def open_loop(
    url: str, bodies: Sequence[bytes], arrivals_s: Sequence[float], timeout_s: float
) -> tuple[Recording, list[str]]:
    rec = Recording(arrivals_s)
    verdicts = ["-"] * len(arrivals_s)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter() + 0.02
        tasks = []
        for i, at in enumerate(arrivals_s):
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(
                asyncio.create_task(_send(session, url, bodies[i], i, start + at, rec, verdicts))
            )
        await asyncio.gather(*tasks)
    rec.duration_s = arrivals_s[-1] if arrivals_s else 0.0
    return rec, verdicts


def upstream_tries(metrics_text: str) -> int:
    """Requests the gateway sent upstream: the count of its per-try latency histogram."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("inference_latency_seconds_count"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def run_mode(
    backend_url: str,
    cache: bool,
    bodies: Sequence[bytes],
    arrivals_s: Sequence[float],
    log_dir: Path,
) -> ModeResult:
    port, admin_port = procs.free_ports(2)
    config = log_dir / f"gateway-cache-{cache}.yaml"
    config.write_text(gateway_config(backend_url, port, admin_port, cache))
    cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    gateway = procs.start(f"gateway-cache-{cache}", cmd, None, log_dir)
    try:
        gateway.wait_http(f"http://127.0.0.1:{admin_port}/readyz")
        url = f"http://127.0.0.1:{port}/v1/completions"
        rec, verdicts = asyncio.run(open_loop(url, bodies, arrivals_s, timeout_s=10.0))
        metrics = asyncio.run(_get_text(f"http://127.0.0.1:{admin_port}/metrics"))
    finally:
        gateway.stop()
    return ModeResult(
        cache,
        rec.summary(),
        hits=verdicts.count("hit"),
        backend_requests=upstream_tries(metrics),
        lag_p99_s=rec.lag_p99_s(),
        behind_schedule=rec.behind_schedule(),
    )


async def _get_text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.text()


def markdown(results: Sequence[ModeResult]) -> str:
    lines = [
        "| cache | requests | hit rate | backend requests | saved | p50 ms | p99 ms | errors "
        "| send lag p99 ms |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        s = r.summary
        saved = s.count - r.backend_requests
        mode = ("on" if r.cache else "off") + (" (generator behind)" if r.behind_schedule else "")
        lines.append(
            f"| {mode} | {s.count} | {r.hits / s.count:.1%} "
            f"| {r.backend_requests} | {saved} ({saved / s.count:.1%}) "
            f"| {s.p50_s * 1000:.2f} | {s.p99_s * 1000:.2f} | {s.errors} "
            f"| {r.lag_p99_s * 1000:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--backend-url", help="an OpenAI-compatible backend already running")
    where.add_argument("--backend-cmd", default=DEFAULT_BACKEND, help="started with {port}")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per mode")
    parser.add_argument("--prompts", type=int, default=1000, help="distinct prompts")
    parser.add_argument("--zipf", type=float, default=1.1, help="the Zipf exponent s")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    arrivals = poisson_arrivals(args.rate, args.duration, rng)
    ranks = zipf_ranks(len(arrivals), args.prompts, args.zipf, rng)
    bodies = [request_body(rank, args.max_tokens) for rank in ranks]
    with tempfile.TemporaryDirectory(prefix="tailgate-cache-") as tmp:
        log_dir = Path(tmp)
        backend: procs.Child | None = None
        url = args.backend_url
        try:
            if url is None:
                port = procs.free_port()
                cmd = shlex.split(args.backend_cmd.format(port=port))
                backend = procs.start("backend", cmd, None, log_dir)
                url = f"http://127.0.0.1:{port}"
                backend.wait_http(f"{url}/health", timeout_s=120.0)
            results = [run_mode(url, cache, bodies, arrivals, log_dir) for cache in (False, True)]
        finally:
            if backend is not None:
                backend.stop()
    print(markdown(results))


if __name__ == "__main__":
    main()
