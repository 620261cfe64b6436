"""The gateway's ``/metrics`` through Prometheus's own tools: promtool's linter and a real server.

Skipped without ``promtool``/``prometheus`` (Debian's ``prometheus`` package ships both),
failed instead when ``TAILGATE_REQUIRE_TOOLS=1`` (CI).
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import admin, free_port, gateway_yaml, running_gateway, start_pod
from tests.integration.test_workers import metric_total, pods, send, worker_gateway
from tests.tools import require_tool

QUERY = "sum(tailgate_requests_total)"
TRAFFIC = 12
# Round robin tries the dead backend once in every three picks of each worker: deterministic.
ROUND_ROBIN = "balancer: {policy: round_robin}\n"
# worker_gateway turns health checks off itself; the in-process gateway must too, or a check
# can mark the dead backend down before any request tries it (that race failed a CI run).
NO_HEALTH_CHECKS = "health_check: {enabled: false}\n"


async def fetch_text(url: str) -> str:
    async with aiohttp.ClientSession() as client, client.get(url) as resp:
        assert resp.status == 200
        return await resp.text()


async def traffic_with_failures(base_url: str) -> None:
    """Successes, retried 503s and a dead backend: requests, retries and failures get samples."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
        for i in range(TRAFFIC):
            # GET /status/503 is retried (idempotent), then answered 503; POSTs succeed.
            method, path = ("GET", "/status/503") if i % 4 == 0 else ("POST", "/v1/completions")
            async with client.request(method, f"{base_url}{path}", json={"i": i}) as resp:
                await resp.read()


def dead_backend() -> str:
    """A URL nothing listens on: its tries fail to connect and are retried elsewhere."""
    return f"http://127.0.0.1:{free_port()}"


async def promtool_check(text: str) -> str:
    promtool = require_tool("promtool")
    result = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    report = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"promtool check metrics failed:\n{report}"
    families = sum(1 for line in text.splitlines() if line.startswith("# TYPE "))
    samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return f"promtool check metrics: ok ({families} families, {samples} samples) {report}"


async def test_promtool_accepts_the_single_process_metrics() -> None:
    require_tool("promtool")
    fleet = [await start_pod("pod0"), await start_pod("pod1")]
    try:
        async with running_gateway(
            gateway_yaml([*fleet, dead_backend()], ROUND_ROBIN + NO_HEALTH_CHECKS)
        ) as gateway:
            await traffic_with_failures(f"http://127.0.0.1:{gateway.public_port}")
            text = await fetch_text(f"{admin(gateway)}/metrics")
    finally:
        for pod in fleet:
            await pod.runner.cleanup()
    assert metric_total(text, "tailgate_requests_total") == TRAFFIC
    assert metric_total(text, "tailgate_upstream_failures_total", kind="connect-failure") > 0
    assert metric_total(text, "tailgate_retries_total") > 0
    print(await promtool_check(text))


async def test_promtool_accepts_the_aggregated_multi_worker_metrics() -> None:
    require_tool("promtool")
    async with pods(2) as fleet, worker_gateway([*fleet, dead_backend()], ROUND_ROBIN) as gw:
        await traffic_with_failures(gw.base)
        text = await fetch_text(f"{gw.admin}/metrics")
    assert metric_total(text, "tailgate_requests_total") == TRAFFIC
    assert metric_total(text, "tailgate_retries_total") > 0
    assert metric_total(text, "tailgate_upstream_failures_total", kind="connect-failure") > 0
    print(await promtool_check(text))


@asynccontextmanager
async def prometheus_scraping(target: str) -> AsyncIterator[str]:
    """A real Prometheus server scraping ``target`` (host:port) every second; its base URL."""
    binary = require_tool("prometheus")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tailgate-prometheus-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - {{job_name: tailgate, static_configs: [{{targets: ['{target}']}}]}}\n"
        )
        with (Path(tmp) / "prometheus.log").open("w") as log:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={Path(tmp) / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            await wait_http_ok(f"{url}/-/ready", proc, Path(tmp) / "prometheus.log")
            yield url
        finally:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)


async def wait_http_ok(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"prometheus exited:\n{log.read_text()}"
            try:
                async with client.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} not ready within 20s:\n{log.read_text()}")


async def instant_query(prometheus: str, query: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{prometheus}/api/v1/query", params={"query": query}) as resp:
            body = await resp.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


async def test_real_prometheus_reads_every_request_from_the_workers() -> None:
    require_tool("prometheus")
    sent = 25
    async with pods(2) as fleet, worker_gateway(fleet) as gw:
        async with prometheus_scraping(gw.admin.removeprefix("http://")) as prometheus:
            assert await send(gw, sent) == [200] * sent
            deadline = time.monotonic() + 20.0
            result = await instant_query(prometheus, QUERY)
            while not (result and float(result[0]["value"][1]) == sent):
                assert time.monotonic() < deadline, f"{QUERY} never reached {sent}: {result}"
                await asyncio.sleep(0.2)
                result = await instant_query(prometheus, QUERY)
            up = await instant_query(prometheus, 'up{job="tailgate"}')
    timestamp, value = result[0]["value"]
    print(f"\nPrometheus query {QUERY!r} -> {value} at {timestamp} (sent {sent})")
    assert float(value) == sent
    assert [float(s["value"][1]) for s in up] == [1.0]
