"""Per-backend polling in the background: active health checks and queue-depth scraping.

A health check may also send a one-token completion (``health_check.generation_interval``):
an inference server's health endpoint can answer 200 while its engine is wedged.

One task per backend and concern, started and stopped as the fleet changes. Health checks run
the checks registered in :data:`gateway.checks.CHECKS` (the HTTP GET, the one-token generation)
and feed the endpoint's :class:`~gateway.health.active.ActiveCheckState`; scrapes parse the
backend's Prometheus ``/metrics`` through the configured load-report profiles
(``gateway.load_reports``: vLLM, SGLang, TGI, Triton, tailgate's backend) into the reported
queue depth and KV-cache usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from gateway.checks import ActiveCheck, build_checks
from gateway.endpoint import Endpoint
from gateway.load_reports import PROFILES, LoadReport, read_report
from gateway.runtime import Runtime

log = logging.getLogger("tailgate.probes")


class Prober:
    """Keeps one health-check task and one scrape task per backend of the fleet."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._tasks: dict[tuple[str, int, str], asyncio.Task[None]] = {}

    def sync(self) -> None:
        """Start tasks for new backends, stop those of removed ones (idempotent, cheap)."""
        rt = self.runtime
        want: set[tuple[str, int, str]] = set()
        for endpoint in rt.fleet.endpoints.values():
            if rt.config.health_check.enabled:
                want.add((endpoint.name, id(endpoint), "health"))
            if rt.config.balancer.queue_depth.scrape_interval > 0:
                want.add((endpoint.name, id(endpoint), "scrape"))
        for key in list(self._tasks):
            if key not in want:
                self._tasks.pop(key).cancel()
        for key in want:
            if key not in self._tasks:
                endpoint = rt.fleet.endpoints[key[0]]
                loop = self._health_loop if key[2] == "health" else self._scrape_loop
                self._tasks[key] = asyncio.create_task(loop(endpoint), name=f"{key[2]}:{key[0]}")

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _health_loop(self, endpoint: Endpoint) -> None:
        rt = self.runtime
        state = endpoint.health.active
        if state is None:
            return
        config = state.config
        checks = build_checks(config)
        delay = state.first_delay_s(rt.rng)
        while True:
            await asyncio.sleep(delay)
            state = endpoint.health.active
            if state is None:  # a reload turned the checks off
                return
            if state.config != config:  # a reload changed what a round runs
                config = state.config
                checks = build_checks(config)
            passed = await self._round(endpoint, checks)
            rt.metrics.health_checks.labels(endpoint.name, "pass" if passed else "fail").inc()
            state.record(passed, rt.clock())
            delay = state.next_delay_s(rt.rng)

    async def _round(self, endpoint: Endpoint, checks: list[ActiveCheck]) -> bool:
        """Every check, each run (none skipped after a failure: a generation check keeps its
        own cadence); the round passes only if all pass."""
        session = self.runtime.session
        if session is None:
            return False
        results = [
            await check.passed(session, endpoint.url, self.runtime.clock()) for check in checks
        ]
        return all(results)

    async def _scrape_loop(self, endpoint: Endpoint) -> None:
        rt = self.runtime
        while True:
            cfg = rt.config.balancer.queue_depth
            if cfg.scrape_interval <= 0:
                return
            jitter = 1.0 + (rt.rng.random() - 0.5) * 0.2
            await asyncio.sleep(cfg.scrape_interval * jitter)
            report = await self._scrape(endpoint, cfg.scrape_path, cfg.scrape_timeout)
            if report is None:
                continue
            now = rt.clock()
            if report.depth is not None:
                endpoint.signals.report_queue_depth(report.depth, now)
            if report.kv_usage is not None:
                endpoint.signals.report_kv_usage(report.kv_usage, now)
            if report.cache_tokens is not None:
                endpoint.signals.report_cache_tokens(report.cache_tokens)

    async def _scrape(self, endpoint: Endpoint, path: str, timeout_s: float) -> LoadReport | None:
        session = self.runtime.session
        if session is None:
            return None
        try:
            async with asyncio.timeout(timeout_s):
                async with session.get(endpoint.url.with_path(path)) as resp:
                    if resp.status != 200:
                        return None
                    text = await resp.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None
        try:
            cfg = self.runtime.config.balancer.queue_depth
            return read_report(text, (PROFILES[name] for name in cfg.profiles), cfg.metrics)
        except ValueError as exc:
            log.debug("unparseable /metrics from %s: %s", endpoint.name, exc)
            return None
