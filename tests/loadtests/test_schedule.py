import itertools
import random
import statistics

import pytest

from loadtests.schedule import linear_ramp, poisson_arrivals, varying_arrivals


def test_poisson_rate_and_bounds() -> None:
    times = poisson_arrivals(1000.0, 20.0, random.Random(3))
    assert times == sorted(times)
    assert times[0] > 0 and times[-1] < 20.0
    assert len(times) == pytest.approx(20_000, rel=0.03)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # exponential gaps: mean == standard deviation == 1 / rate
    assert statistics.fmean(gaps) == pytest.approx(0.001, rel=0.03)
    assert statistics.pstdev(gaps) == pytest.approx(0.001, rel=0.05)


def test_poisson_is_reproducible_from_the_rng() -> None:
    assert poisson_arrivals(50, 5, random.Random(9)) == poisson_arrivals(50, 5, random.Random(9))
    assert poisson_arrivals(0, 5, random.Random(1)) == []


def test_ramp_thinning_follows_the_rate() -> None:
    ramp = linear_ramp(100.0, 900.0, 10.0)
    assert ramp(0) == 100.0 and ramp(5) == 500.0 and ramp(10) == 900.0 and ramp(99) == 900.0
    times = varying_arrivals(ramp, 900.0, 10.0, random.Random(5))
    first = sum(1 for t in times if t < 1.0)  # about the integral of the rate over [0, 1)
    last = sum(1 for t in times if t >= 9.0)
    assert first == pytest.approx(140, rel=0.25)
    assert last == pytest.approx(860, rel=0.12)
    assert len(times) == pytest.approx(5000, rel=0.05)


def test_thinning_refuses_a_rate_above_the_peak() -> None:
    with pytest.raises(ValueError):
        varying_arrivals(lambda t: 200.0, 100.0, 1.0, random.Random(1))
