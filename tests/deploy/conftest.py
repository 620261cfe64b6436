"""Metric families the gateway and the backend really export, scraped once per session."""

from __future__ import annotations

import importlib.util

import pytest

from tests.deploy.live_metrics import backend_metrics_page, gateway_metrics_page
from tests.deploy.promql import families


@pytest.fixture(scope="session")
def gateway_families() -> set[str]:
    return families(gateway_metrics_page())


@pytest.fixture(scope="session")
def backend_families() -> set[str]:
    """The live CPU backend's families, plus the GPU-only ones its registry declares with a
    GPU (a CPU machine has no GPU to make the live page show them)."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not importable: cannot run tailgate-backend (pip install .[backend])")
    from prometheus_client import generate_latest

    from backend.metrics import BackendMetrics

    live = families(backend_metrics_page())
    with_gpu = BackendMetrics(lambda: 0, lambda: 0, gpus=1)
    return live | families(generate_latest(with_gpu.registry).decode())
