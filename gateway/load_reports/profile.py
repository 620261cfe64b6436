"""What a backend's /metrics says about its load, read through a named profile.

A profile lists which metric names of one server mean waiting requests, running requests,
KV-cache usage (a 0-1 share) and the KV cache's size in tokens (how much of the prompts it was
sent a backend can hold: the prefix index's bound for it). Servers name these differently
(vLLM ``vllm:num_requests_waiting``, SGLang ``sglang:num_queue_reqs``, TGI ``tgi_queue_size``...),
and vLLM renamed its KV gauge (``vllm:gpu_cache_usage_perc`` -> ``vllm:kv_cache_usage_perc``):
a profile lists every name a version may export. Parsing is prometheus-client's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass(frozen=True, slots=True)
class LoadProfile:
    name: str
    waiting: tuple[str, ...] = ()
    running: tuple[str, ...] = ()
    kv_usage: tuple[str, ...] = ()  # a share in [0, 1]
    cache_tokens: tuple[str, ...] = ()  # gauges of the KV cache's size, in tokens
    # Info gauges whose ``num_gpu_blocks`` x ``block_size`` labels are the size (vLLM's
    # ``cache_config_info``: the size is a label, the value is always 1).
    cache_blocks_info: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LoadReport:
    """One scrape's reading: requests held (waiting + running), KV usage and the KV cache's
    size in tokens, each None where not reported."""

    depth: float | None
    kv_usage: float | None
    cache_tokens: int | None = None


def read_report(
    text: str, profiles: Iterable[LoadProfile], extra_depth: tuple[str, ...] = ()
) -> LoadReport:
    """The load one scrape reports, read through the first of ``profiles`` whose names it
    holds: the waiting and running samples summed (all label sets), plus the ``extra_depth``
    metric names; the highest KV usage reported (a multi-engine server reports one sample per
    engine and the fullest one limits it); the smallest KV cache size reported (for the same
    reason: the smallest engine evicts first).

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
    cache_names = {name for p in ordered for name in p.cache_tokens}
    info_names = {name for p in ordered for name in p.cache_blocks_info}
    cache_tokens: int | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not math.isfinite(sample.value):
                continue
            size = _cache_size(sample, family.name, cache_names, info_names)
            if size is not None and (cache_tokens is None or size < cache_tokens):
                cache_tokens = size
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
    return LoadReport(depth, None if kv is None else min(1.0, kv), cache_tokens)


def _cache_size(
    sample: Sample, family: str, token_names: set[str], info_names: set[str]
) -> int | None:
    """The KV cache size in tokens ``sample`` reports, if it is one (positive, whole)."""
    if _named(sample.name, family, token_names):
        size = sample.value
    elif family in info_names or sample.name in info_names:
        try:
            size = float(sample.labels["num_gpu_blocks"]) * float(sample.labels["block_size"])
        except (KeyError, ValueError):
            return None
    else:
        return None
    return int(size) if math.isfinite(size) and size >= 1 else None


def _profile_of(sample: str, family: str, names: dict[str, int]) -> int | None:
    index = names.get(sample)
    if index is None and sample == family:
        index = names.get(family)
    return index


def _named(sample: str, family: str, wanted: set[str]) -> bool:
    return sample in wanted or (family in wanted and sample == family)
