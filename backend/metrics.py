"""The backend's Prometheus families, on a registry of its own (one per server).

Beside its own names it exports the vLLM families that gateways, the Gateway API Inference
Extension and vLLM dashboards read (queue, running batch, KV-cache usage, prefix-cache hits,
cache configuration, time to first token), with vLLM's meaning and ``model_name`` label, so
they work unchanged against this server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
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


@dataclass(frozen=True)
class CacheStats:
    """A reading of the paged KV cache: its shape, its use, the prefix cache's tokens."""

    block_size: int
    num_blocks: int
    usage: float  # share of blocks held by running requests, 0..1
    query_tokens: int  # prompt tokens looked up in the prefix cache
    hit_tokens: int  # of which were found cached


class CacheCollector(Collector):
    """vLLM's KV-cache and prefix-cache families, read from the engine at scrape time."""

    def __init__(self, stats: Callable[[], CacheStats | None], model_name: str) -> None:
        self.stats = stats
        self.model_name = model_name

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        if stats is None:  # the model is still loading: no cache yet
            return
        labels, values = ["model_name"], [self.model_name]
        usage = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc", "KV-cache usage; 1 means 100 percent", labels=labels
        )
        usage.add_metric(values, stats.usage)
        queries = CounterMetricFamily(
            "vllm:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache",
            labels=labels,
        )
        queries.add_metric(values, stats.query_tokens)
        hits = CounterMetricFamily(
            "vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache", labels=labels
        )
        hits.add_metric(values, stats.hit_tokens)
        config_labels = ["model_name", "block_size", "num_gpu_blocks", "enable_prefix_caching"]
        info = GaugeMetricFamily(
            "vllm:cache_config_info", "Information of the KV cache", labels=config_labels
        )
        info.add_metric(
            [self.model_name, str(stats.block_size), str(stats.num_blocks), "True"], 1.0
        )
        yield from (usage, queries, hits, info)


class BackendMetrics:
    def __init__(
        self,
        queue_depth: Callable[[], int],
        running: Callable[[], int],
        gpus: int,
        cache: Callable[[], CacheStats | None] = lambda: None,
        model_name: str = "",
    ) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
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
        labels = ["model_name"]
        vllm_waiting = Gauge(
            "vllm:num_requests_waiting",
            "Requests waiting to be processed",
            labels,
            registry=self.registry,
        )
        vllm_waiting.labels(model_name).set_function(queue_depth)
        vllm_running = Gauge(
            "vllm:num_requests_running",
            "Requests in the running batch",
            labels,
            registry=self.registry,
        )
        vllm_running.labels(model_name).set_function(running)
        self.vllm_ttft_s = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        ).labels(model_name)
        self.registry.register(CacheCollector(cache, model_name))
        self.generated_tokens = Counter(
            "tailgate_backend_generated_tokens", "Tokens generated", registry=self.registry
        )
        if gpus:
            self.registry.register(GpuCollector(gpus))

    def first_token(self, ttft_s: float) -> None:
        """Record a time to first token under both names."""
        self.ttft_s.observe(ttft_s)
        self.vllm_ttft_s.observe(ttft_s)
