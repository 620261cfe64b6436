"""The backend's Prometheus families, on a registry of its own (one per server)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("tailgate.backend.metrics")

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class GpuCollector(Collector):
    """Utilisation and memory of each rank's GPU, read through NVML at scrape time.

    Rank r drives ``cuda:r`` (see ``backend.tp``), so rank 0 can report every rank's GPU
    without asking the other processes.
    """

    def __init__(self, world: int) -> None:
        self.world = world

    def collect(self) -> Iterator[GaugeMetricFamily]:
        import torch

        util = GaugeMetricFamily("gpu_utilization", "GPU busy share, percent", labels=["rank"])
        mem = GaugeMetricFamily(
            "tailgate_backend_gpu_memory_used_bytes", "GPU memory in use", labels=["rank"]
        )
        for rank in range(self.world):
            try:
                util.add_metric([str(rank)], float(torch.cuda.utilization(rank)))
                mem.add_metric([str(rank)], float(torch.cuda.device_memory_used(rank)))
            except Exception as exc:  # NVML missing or refused: report what we can
                log.debug("no NVML reading for rank %d: %s", rank, exc)
        yield util
        yield mem


class BackendMetrics:
    def __init__(
        self, queue_depth: Callable[[], int], running: Callable[[], int], gpus: int
    ) -> None:
        self.registry = CollectorRegistry()
        waiting = Gauge(
            "tailgate_backend_queue_depth",
            "Requests waiting for a batch slot",
            registry=self.registry,
        )
        waiting.set_function(queue_depth)
        active = Gauge(
            "tailgate_backend_running_requests",
            "Requests in the running batch",
            registry=self.registry,
        )
        active.set_function(running)
        self.latency_s = Histogram(
            "inference_latency_seconds",
            "Time from admission to the last token",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.ttft_s = Histogram(
            "tailgate_backend_time_to_first_token_seconds",
            "Time from admission to the first token",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "tailgate_backend_generated_tokens", "Tokens generated", registry=self.registry
        )
        if gpus:
            self.registry.register(GpuCollector(gpus))
