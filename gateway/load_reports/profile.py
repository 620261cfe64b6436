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
    """The load one scrape reports, read through the first of ``profiles`` whose names it
    holds: the waiting and running samples summed (all label sets), plus the ``extra_depth``
    metric names; the highest KV usage reported (a multi-engine server reports one sample per
    engine and the fullest one limits it).

    One profile only: a server may export another's names beside its own (tailgate's backend
    exports ``tailgate_backend_*`` and vLLM's ``vllm:*`` for the same requests), and summing
    both would count every request twice. Names may be given with or without a ``_total``
    suffix. Raises ValueError on text prometheus-client cannot parse.
    """
    ordered = list(profiles)
    depth_of: dict[str, int] = {}  # metric name -> index of the first profile naming it
    kv_of: dict[str, int] = {}
    for index, profile in enumerate(ordered):
        for name in (*profile.waiting, *profile.running):
            depth_of.setdefault(name, index)
        for name in profile.kv_usage:
            kv_of.setdefault(name, index)
    extra = set(extra_depth)
    depths: dict[int, float] = {}
    kvs: dict[int, float] = {}
    extra_depth_sum: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not math.isfinite(sample.value):
                continue
            at = _profile_of(sample.name, family.name, depth_of)
            if at is not None:
                depths[at] = depths.get(at, 0.0) + sample.value
            elif (kv_at := _profile_of(sample.name, family.name, kv_of)) is not None:
                kvs[kv_at] = max(kvs.get(kv_at, sample.value), sample.value)
            if _named(sample.name, family.name, extra):
                extra_depth_sum = (extra_depth_sum or 0.0) + sample.value
    found = sorted(set(depths) | set(kvs))
    chosen = found[0] if found else None
    depth = depths.get(chosen) if chosen is not None else None
    if extra_depth_sum is not None:
        depth = (depth or 0.0) + extra_depth_sum
    kv = kvs.get(chosen) if chosen is not None else None
    return LoadReport(depth, None if kv is None else min(1.0, kv))


def _profile_of(sample: str, family: str, names: dict[str, int]) -> int | None:
    index = names.get(sample)
    if index is None and sample == family:
        index = names.get(family)
    return index


def _named(sample: str, family: str, wanted: set[str]) -> bool:
    return sample in wanted or (family in wanted and sample == family)
