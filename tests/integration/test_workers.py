"""``tailgate serve --workers 2`` as a process tree: sharing, metrics, reload, restart, drain."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import parse_config
from gateway.workers import Master, RestartPolicy
from tests.helpers import GatewayProcess, Pod, free_ports, gateway_yaml, get_json, start_pod

WORKERS = 2


@dataclass
class WorkerGateway:
    proc: GatewayProcess
    base: str
    admin: str


@asynccontextmanager
async def worker_gateway(
    pods: Sequence[Pod | str], extra: str = "", admin_token: str | None = None
) -> AsyncIterator[WorkerGateway]:
    """A ``--workers 2`` gateway in front of ``pods`` (or URLs), ready: every worker listens."""
    listen_port, admin_port = free_ports(2)
    token = f", token: {admin_token}" if admin_token else ""
    yaml_text = (
        gateway_yaml(list(pods))  # type: ignore[arg-type]
        .replace("port: 0}", f"port: {listen_port}}}", 1)
        .replace("port: 0}", f"port: {admin_port}{token}}}", 1)
    )
    yaml_text += "health_check: {enabled: false}\ndrain_timeout: 10s\n" + extra
    proc = GatewayProcess(yaml_text, ("--workers", str(WORKERS)))
    try:
        await asyncio.to_thread(proc.wait_ready, admin_port)
        yield WorkerGateway(
            proc, f"http://127.0.0.1:{listen_port}", f"http://127.0.0.1:{admin_port}"
        )
    finally:
        proc.stop()


@asynccontextmanager
async def pods(n: int, **kwargs: Any) -> AsyncIterator[list[Pod]]:
    started = [await start_pod(f"pod{i}", **kwargs) for i in range(n)]
    try:
        yield started
    finally:
        for pod in started:
            await pod.runner.cleanup()


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of every sample called ``name`` whose labels include ``labels``."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def scrape(gw: WorkerGateway) -> str:
    async with aiohttp.ClientSession() as client, client.get(f"{gw.admin}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def send(gw: WorkerGateway, count: int, concurrency: int = 4) -> list[int]:
    """``count`` POSTs, each on a new connection so the kernel spreads them across workers."""
    connector = aiohttp.TCPConnector(force_close=True)
    gate = asyncio.Semaphore(concurrency)

    async def one(client: aiohttp.ClientSession, i: int) -> int:
        async with gate, client.post(f"{gw.base}/v1/completions", json={"i": i}) as resp:
            await resp.read()
            return resp.status

    async with aiohttp.ClientSession(connector=connector) as client:
        return list(await asyncio.gather(*(one(client, i) for i in range(count))))


async def eventually(
    probe: Callable[[], Awaitable[Any]], accept: Callable[[Any], bool], timeout_s: float = 10.0
) -> Any:
    """Poll ``probe`` until ``accept`` holds for its result; the last result fails the test."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await probe()
        if accept(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s; last: {result!r}")
        await asyncio.sleep(0.05)


def samples_by_worker(backends: dict[str, Any]) -> dict[int, int]:
    """Requests each worker has observed (its balancer's latency samples), by worker pid."""
    return {
        w["pid"]: sum(
            b["signals"]["latency_samples"] for g in w["groups"].values() for b in g["backends"]
        )
        for w in backends["workers"]
    }


async def test_workers_share_the_port_and_metrics_count_each_request_once() -> None:
    sent = 60
    # hedging off: a hedge is a second try (a second latency sample) of the same request
    async with pods(2) as fleet, worker_gateway(fleet, "hedging: {enabled: false}\n") as gw:
        statuses = await send(gw, sent)
        assert statuses == [200] * sent
        per_worker = samples_by_worker(await get_json(f"{gw.admin}/admin/backends"))
        print(f"\nrequests observed per worker pid: {per_worker}")
        assert len(per_worker) == WORKERS
        assert all(n > 0 for n in per_worker.values()), per_worker
        assert sum(per_worker.values()) == sent
        text = await scrape(gw)
        assert metric_total(text, "tailgate_requests_total") == sent
        assert metric_total(text, "tailgate_requests_total", code="200") == sent
        ready = await get_json(f"{gw.admin}/readyz")
        assert ready == {"ready": True, "reason": "ok", "workers_ready": 2, "workers": 2}


async def test_sighup_reloads_every_worker() -> None:
    async with pods(1) as fleet, worker_gateway(fleet) as gw:
        gw.proc.proc.send_signal(signal.SIGHUP)

        async def reloads() -> float:
            return metric_total(await scrape(gw), "tailgate_config_reloads_total", result="success")

        await eventually(reloads, lambda n: n == WORKERS)


async def test_the_admin_token_guards_the_master_not_its_talk_with_the_workers() -> None:
    async with pods(1) as fleet, worker_gateway(fleet, admin_token="s3cret") as gw:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{gw.admin}/admin/backends") as resp:
                assert resp.status == 401
            auth = {"Authorization": "Bearer s3cret"}
            async with client.get(f"{gw.admin}/admin/backends", headers=auth) as resp:
                backends = await resp.json()
            async with client.get(f"{gw.admin}/readyz", headers=auth) as resp:
                assert resp.status == 200
    assert [sorted(w) for w in backends["workers"]] == [["draining", "groups", "pid", "slot"]] * 2


async def test_a_killed_worker_is_replaced_and_its_counts_are_kept() -> None:
    """The replacement starts with the last valid config, though the file now holds a bad edit."""
    async with pods(1) as fleet, worker_gateway(fleet) as gw:
        assert await send(gw, 10) == [200] * 10
        before = await get_json(f"{gw.admin}/admin/backends")
        victim, survivor = (w["pid"] for w in before["workers"])
        gw.proc.config_path.write_text("listen: [not, a, mapping]\n")
        os.kill(victim, signal.SIGKILL)

        async def pids() -> set[int]:
            backends = await get_json(f"{gw.admin}/admin/backends")
            return {w["pid"] for w in backends["workers"] if "error" not in w}

        after = await eventually(pids, lambda p: len(p) == WORKERS and victim not in p)
        assert survivor in after
        assert await send(gw, 10) == [200] * 10
        assert metric_total(await scrape(gw), "tailgate_requests_total") == 20
        output = gw.proc.stop()
    assert f"(pid {victim}) died unexpectedly: killed by SIGKILL" in output
    assert "config file invalid: worker 0 starts with the last valid one" in output


async def test_sigterm_drains_workers_and_exits_zero_after_the_request_in_flight() -> None:
    async with pods(1) as fleet, worker_gateway(fleet) as gw:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{gw.base}/gated-stream") as resp:
                assert resp.status == 200
                assert await resp.content.readline() == b'data: {"n": 1}\n'
                gw.proc.proc.send_signal(signal.SIGTERM)

                async def backends() -> dict[str, Any]:
                    return await get_json(f"{gw.admin}/admin/backends")

                draining = await eventually(
                    backends,
                    lambda b: (
                        b["draining"]
                        and b["workers"]
                        and all(w.get("draining") for w in b["workers"])
                    ),
                )
                assert draining["draining"] is True
                fleet[0].state.gate.set()
                rest = await resp.read()
        assert rest.endswith(b"data: [DONE]\n\n")
        status = await asyncio.to_thread(gw.proc.proc.wait, 20)
        assert status == 0
        output = gw.proc.stop()
    assert "SIGTERM: draining 2 workers" in output


async def test_a_crash_loop_stops_the_master_with_exit_status_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In-process master (no signal handlers installed): two crashes allowed one restart."""
    async with pods(1) as fleet:
        config = parse_config(gateway_yaml(fleet, "health_check: {enabled: false}\n"))
        restarts = RestartPolicy(max_restarts=1, base_delay_s=0.01)
        master = Master(config, None, WORKERS, False, tmp_path, restarts)
        run = asyncio.create_task(master.run())
        try:

            async def admin_up() -> int | None:
                return master.admin_port

            await eventually(admin_up, lambda port: port is not None, timeout_s=20.0)
            first = master.workers[0].pid
            os.kill(first, signal.SIGKILL)

            async def slot0() -> int | None:
                worker = master.workers.get(0)
                return worker.pid if worker else None

            second = await eventually(slot0, lambda pid: pid not in (None, first))
            os.kill(second, signal.SIGKILL)
            assert await asyncio.wait_for(asyncio.shield(run), 20.0) == 1
        finally:
            master.shutdown()
            await run
    assert master.workers == {}
    assert "workers crashed 2 times within 60s: stopping the gateway" in caplog.text


async def test_the_master_shows_each_workers_cache() -> None:
    async with pods(1) as fleet, worker_gateway(fleet, "cache: {enabled: true}\n") as gw:
        greedy = {"prompt": "p", "temperature": 0}
        async with aiohttp.ClientSession() as client:
            for _ in range(6):
                async with client.post(f"{gw.base}/v1/completions", json=greedy) as resp:
                    assert resp.status == 200
                    assert resp.headers["X-Tailgate-Cache"] in ("hit", "miss")
        caches = (await get_json(f"{gw.admin}/admin/cache"))["workers"]
        assert len(caches) == WORKERS
        # the workers keep their own caches: at most one miss each, then hits
        assert {entry["entries"] for entry in caches} <= {0, 1}
        assert sum(entry["entries"] for entry in caches) >= 1
