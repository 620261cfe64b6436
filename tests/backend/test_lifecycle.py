"""Readiness, clean shutdown and a dying rank, on real servers."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time

import httpx
import pytest

pytest.importorskip("torch")

from backend import lifecycle
from backend.config import BackendConfig
from backend.runner import ModelRunner

pytestmark = [pytest.mark.torch, pytest.mark.slow]

WAIT_S = 20
START_S = 60  # a TP=2 start on a loaded CI machine: spawning a rank, loading, warming up
RANK_LINE = re.compile(r"started tensor-parallel rank 1 \(pid (\d+)\)")


async def test_ready_flips_only_after_load_and_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    real_start = ModelRunner.start

    def held_start(spec, store):
        assert gate.wait(WAIT_S)
        return real_start(spec, store)

    monkeypatch.setattr(lifecycle.ModelRunner, "start", staticmethod(held_start))
    server = lifecycle.Lifecycle(BackendConfig(port=0, max_model_len=64).validate())
    task = asyncio.create_task(server.run())
    await asyncio.wait_for(server.listening.wait(), WAIT_S)
    url = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
        assert (await http.get("/health")).status_code == 200
        not_ready = await http.get("/ready")
        assert not_ready.status_code == 503 and not_ready.json()["error"]["code"] == "not_ready"
        gate.set()
        await asyncio.wait_for(asyncio.to_thread(server.state.engine.ready.wait), WAIT_S)
        for _ in range(100):  # the flag is flipped on the loop right after warm-up
            if (await http.get("/ready")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        assert (await http.get("/ready")).status_code == 200
    server.request_stop()
    assert await asyncio.wait_for(task, WAIT_S) == 0


def alive(pid: int) -> bool:
    """Running, and not merely a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} outlived its rank 0"
        time.sleep(0.05)


def test_tp2_serves_and_sigterm_stops_every_rank(backend_process) -> None:
    server = backend_process("--preset", "tiny", "--tp", "2", "--max-model-len", "64")
    url = server.wait_ready(START_S)
    worker_pid = int(server.wait_for(RANK_LINE, WAIT_S).group(1))
    response = httpx.post(
        f"{url}/v1/completions",
        json={"prompt": "hi", "max_tokens": 4, "temperature": 0},
        timeout=WAIT_S,
    )
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] >= 1
    assert server.stop(WAIT_S) == 0
    assert not alive(worker_pid)


def test_killed_rank_brings_the_server_down_loudly(backend_process) -> None:
    server = backend_process("--preset", "tiny", "--tp", "2", "--max-model-len", "64")
    server.wait_ready(START_S)
    worker_pid = int(server.wait_for(RANK_LINE, WAIT_S).group(1))
    os.kill(worker_pid, signal.SIGKILL)
    assert server.proc.wait(WAIT_S) != 0
    assert f"rank 1 (pid {worker_pid}) exited with code -9" in server.output


def test_workers_exit_when_rank_zero_is_killed(backend_process) -> None:
    server = backend_process("--preset", "tiny", "--tp", "2", "--max-model-len", "64")
    server.wait_ready(START_S)
    worker_pid = int(server.wait_for(RANK_LINE, WAIT_S).group(1))
    server.proc.kill()
    server.proc.wait(WAIT_S)
    wait_gone(worker_pid)
