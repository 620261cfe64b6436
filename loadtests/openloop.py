"""The open-loop generator: send on a fixed schedule, never wait for answers, record everything.

Each request is recorded with its latency (from the moment it was actually sent to the last
byte of the answer; ``time.perf_counter``, as uvloop's ``loop.time()`` has only millisecond
resolution), its status (``TIMEOUT`` or ``CONN_ERROR`` when there was none) and its
*lag*: how late it left against the schedule. Lag is the generator's own honesty check; when
it grows, the generator, not the system under test, is the bottleneck, and the run says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from loadtests.stats import Summary, percentile, summarize

TIMEOUT = -1
CONN_ERROR = -2
# Falling behind shows as lag that grows: a median above 1 ms, or a p99 above 10 ms (an idle
# event loop on a shared 2-core VM already overshoots a 1 ms sleep by ~3 ms at p99).
BEHIND_LAG_P50_S = 0.001
BEHIND_LAG_P99_S = 0.010

Event = tuple[float, Callable[[], Awaitable[object]]]


@dataclass
class Recording:
    """Per-request results, index-aligned with the schedule."""

    scheduled_s: Sequence[float]
    latency_s: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    lag_s: list[float] = field(default_factory=list)
    duration_s: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.scheduled_s)
        self.latency_s = [0.0] * n
        self.status = [0] * n
        self.lag_s = [0.0] * n

    @property
    def ok(self) -> list[bool]:
        return [s == 200 for s in self.status]

    def summary(self) -> Summary:
        return summarize(self.latency_s, self.ok, self.duration_s)

    def lag_p99_s(self) -> float:
        return percentile(sorted(self.lag_s), 99) if self.lag_s else 0.0

    def lag_p50_s(self) -> float:
        return percentile(sorted(self.lag_s), 50) if self.lag_s else 0.0

    def behind_schedule(self) -> bool:
        return self.lag_p50_s() > BEHIND_LAG_P50_S or self.lag_p99_s() > BEHIND_LAG_P99_S


@dataclass(frozen=True)
class Target:
    """Where to send: a list of base URLs (one is picked per request by ``pick``) and a body."""

    urls: Sequence[str]
    path: str = "/v1/completions"
    body: bytes = b'{"model": "fake", "prompt": "hello", "max_tokens": 16}'
    timeout_s: float = 5.0


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    target: Target,
    index: int,
    due: float,
    rec: Recording,
) -> None:
    sent = time.perf_counter()
    status = CONN_ERROR
    try:
        async with session.post(
            url,
            data=target.body,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=target.timeout_s),
        ) as resp:
            await resp.read()
            status = resp.status
    except TimeoutError:
        status = TIMEOUT
    except (aiohttp.ClientError, OSError):
        status = CONN_ERROR
    rec.latency_s[index] = time.perf_counter() - sent
    rec.status[index] = status
    rec.lag_s[index] = sent - due


async def run_open_loop(
    target: Target,
    arrivals_s: Sequence[float],
    duration_s: float,
    pick: Callable[[int], int] = lambda i: 0,
    events: Sequence[Event] = (),
) -> Recording:
    """Send one POST per arrival; run ``events`` (e.g. fault injection) at their offsets.

    ``pick(i)`` chooses the URL of request ``i`` (a client-side spread for the no-proxy row).
    Returns once every request has an answer or has timed out.
    """
    rec = Recording(arrivals_s)
    urls = [u.rstrip("/") + target.path for u in target.urls]
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, enable_cleanup_closed=False)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        start = time.perf_counter() + 0.02
        pending: set[asyncio.Task[object]] = set()
        for at, action in events:
            pending.add(asyncio.create_task(_at(start + at, action)))
        for i, at in enumerate(arrivals_s):
            due = start + at
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_one(session, urls[pick(i)], target, i, due, rec))
            pending.add(task)
            task.add_done_callback(pending.discard)
        remaining = max(start + duration_s - time.perf_counter(), 0.0)
        await asyncio.sleep(remaining)
        if pending:
            await asyncio.wait(pending)
    rec.duration_s = duration_s
    return rec


async def _at(when: float, action: Callable[[], Awaitable[object]]) -> None:
    delay = when - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    await action()
