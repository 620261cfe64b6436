"""What a backend's /metrics says about its load, read through a named profile.

A profile lists which metric names of one server mean waiting requests, running requests and
KV-cache usage (a 0-1 share). Servers name these differently (vLLM ``vllm:num_requests_waiting``,
SGLang ``sglang:num_queue_reqs``, TGI ``tgi_queue_size``...), and vLLM renamed its KV gauge
(``vllm:gpu_cache_usage_perc`` -> ``vllm:kv_cache_usage_perc``): a profile lists every name a
version may export. Parsing is prometheus-client's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True, slots=True)
class LoadProfile:
    name: str
    waiting: tuple[str, ...] = ()
    running: tuple[str, ...] = ()
    kv_usage: tuple[str, ...] = ()  # a share in [0, 1]


@dataclass(frozen=True, slots=True)
class LoadReport:
    """One scrape's reading: requests held (waiting + running) and KV usage, where reported."""

    depth: float | None
    kv_usage: float | None


def read_report(
    text: str, profiles: Iterable[LoadProfile], extra_depth: tuple[str, ...] = ()
) -> LoadReport:
    """Sum the waiting and running samples (all label sets) of every profile, plus the
    ``extra_depth`` metric names; the highest KV usage reported (one engine per scrape, but a
    multi-engine server reports one sample per engine and the fullest one limits it).

    Names may be given with or without a ``_total`` suffix. Raises ValueError on text
    prometheus-client cannot parse.
    """
    depth_names: set[str] = set(extra_depth)
    kv_names: set[str] = set()
    for profile in profiles:
        depth_names.update(profile.waiting, profile.running)
        kv_names.update(profile.kv_usage)
    depth = 0.0
    depth_found = False
    kv: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not math.isfinite(sample.value):
                continue
            if _named(sample.name, family.name, depth_names):
                depth += sample.value
                depth_found = True
            elif _named(sample.name, family.name, kv_names):
                kv = sample.value if kv is None else max(kv, sample.value)
    return LoadReport(depth if depth_found else None, None if kv is None else min(1.0, kv))


def _named(sample: str, family: str, wanted: set[str]) -> bool:
    return sample in wanted or (family in wanted and sample == family)
