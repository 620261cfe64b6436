"""Fault injection on a real (in-process) server, and start-up refusals of the command line."""

from __future__ import annotations

import random
import subprocess
import sys
import time

import httpx
import pytest

pytest.importorskip("torch")
from aiohttp import web

from backend.config import BackendConfig
from backend.engine import Engine
from backend.metrics import BackendMetrics
from backend.server import BackendState, build_app
from backend.tokenizer import ByteTokenizer
from tests.backend.conftest import ROOT

pytestmark = pytest.mark.torch

FAULT_LATENCY_S = 0.05


async def start_app(config: BackendConfig) -> tuple[web.AppRunner, str]:
    engine = Engine(lambda: None, 1, 64, 4, random.Random(0))  # never started: no model needed
    state = BackendState(
        config=config,
        engine=engine,
        tokenizer=ByteTokenizer(),
        metrics=BackendMetrics(lambda: 0, lambda: 0, gpus=0),
        vocab_size=260,
        rng=random.Random(config.seed),
    )
    runner = web.AppRunner(build_app(state))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def test_injected_errors_and_latency_hit_the_api_only() -> None:
    config = BackendConfig(fault_error_rate=1.0, fault_latency_s=FAULT_LATENCY_S)
    runner, url = await start_app(config)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            started = time.monotonic()
            failed = await http.post("/v1/completions", json={"prompt": "hi"})
            assert time.monotonic() - started >= FAULT_LATENCY_S
            assert failed.status_code == 500
            assert failed.json()["error"]["code"] == "injected_fault"
            assert failed.headers["X-Queue-Depth"] == "0"
            assert (await http.get("/health")).status_code == 200
            assert (await http.get("/v1/models")).status_code == 200
    finally:
        await runner.cleanup()


async def test_error_rate_is_a_share_of_requests() -> None:
    runner, url = await start_app(BackendConfig(fault_error_rate=0.5, seed=3))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            codes = [
                (await http.post("/v1/completions", content=b"{")).status_code for _ in range(40)
            ]
    finally:
        await runner.cleanup()
    # Unfaulted requests reach validation and fail there (400); faulted ones get 500.
    assert set(codes) == {400, 500}
    assert 8 <= codes.count(500) <= 32


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env_cmd = [sys.executable, "-m", "backend.cli", "--device", "cpu", "--port", "0", *args]
    return subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_indivisible_tp_is_refused_before_anything_starts() -> None:
    done = run_cli("--preset", "tiny", "--tp", "3")
    assert done.returncode == 2
    assert "--tp 3 does not divide the model's 4 attention heads" in done.stderr


def test_bad_setting_is_named() -> None:
    done = run_cli("--preset", "tiny", "--fault-error-rate", "2")
    assert done.returncode == 2 and "fault_error_rate" in done.stderr
