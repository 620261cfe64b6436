import math

import pytest

from loadtests.stats import all_requests_latencies, percentile, summarize


def test_nearest_rank_percentile_picks_an_observed_value() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.9) == 100.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 1) == 7.0


def test_percentile_rejects_out_of_range_and_empty_is_nan() -> None:
    with pytest.raises(ValueError):
        percentile([1.0], 0)
    assert math.isnan(percentile([], 50))


def test_failures_rank_as_the_slowest_requests() -> None:
    latencies = [0.010] * 98 + [0.001, 0.002]
    ok = [True] * 98 + [False, False]  # the two fastest answers were errors
    ranked = all_requests_latencies(latencies, ok)
    assert ranked[-2:] == [math.inf, math.inf]
    s = summarize(latencies, ok, duration_s=2.0)
    assert s.p50_s == 0.010
    assert math.isinf(s.p99_s)
    assert s.errors == 2
    assert s.error_rate == pytest.approx(0.02)
    assert s.throughput_rps == pytest.approx(49.0)
    assert s.max_ok_s == 0.010


def test_error_rate_below_the_percentile_leaves_it_finite() -> None:
    latencies = [i / 1000 for i in range(1000)]
    ok = [True] * 1000
    ok[0] = False  # one failure in 1000 reaches only p99.9 and above
    s = summarize(latencies, ok, duration_s=1.0)
    assert s.p99_s == pytest.approx(0.990)
    assert math.isinf(s.p999_s)


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError):
        all_requests_latencies([0.1], [True, False])
