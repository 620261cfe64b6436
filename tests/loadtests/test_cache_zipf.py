"""The cache loadtest's request mix and its reading of the gateway's metrics."""

from __future__ import annotations

import random
from collections import Counter

from loadtests.cache_zipf import poisson_arrivals, upstream_tries, zipf_ranks


def test_zipf_ranks_are_seeded_and_skewed_toward_the_top() -> None:
    ranks = zipf_ranks(20_000, 100, 1.1, random.Random(3))
    assert ranks == zipf_ranks(20_000, 100, 1.1, random.Random(3))
    assert all(0 <= rank < 100 for rank in ranks)
    counts = Counter(ranks)
    # weight 1/(k+1)^1.1: rank 0 twice as likely as rank 1 (2^1.1 = 2.14), far above rank 99
    assert 1.8 < counts[0] / counts[1] < 2.5
    assert counts[0] > 50 * counts[99]


def test_poisson_arrivals_stay_inside_the_window() -> None:
    arrivals = poisson_arrivals(100.0, 10.0, random.Random(1))
    assert arrivals == sorted(arrivals) and arrivals[0] > 0 and arrivals[-1] < 10.0
    assert 850 < len(arrivals) < 1150


def test_upstream_tries_sums_every_backend() -> None:
    text = (
        "# TYPE inference_latency_seconds histogram\n"
        'inference_latency_seconds_bucket{backend="a",le="0.005"} 3.0\n'
        'inference_latency_seconds_count{backend="a"} 7.0\n'
        'inference_latency_seconds_count{backend="b"} 5.0\n'
        'tailgate_requests_total{route="default",backend="-",code="200"} 40.0\n'
    )
    assert upstream_tries(text) == 12
