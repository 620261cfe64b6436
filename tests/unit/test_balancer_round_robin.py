"""round_robin: weighted, by earliest virtual deadline; exact per period, smooth within it."""

import random
from collections import Counter
from itertools import groupby

from gateway.balancer.base import SimpleCandidate
from gateway.balancer.round_robin import RoundRobin
from gateway.config.model import BalancerConfig

RNG = random.Random(0)  # round robin never draws; the argument is part of the interface


def fleet(**weights: float) -> list[SimpleCandidate]:
    return [SimpleCandidate.new(n, now=0.0, weight=w) for n, w in weights.items()]


def picks(p: RoundRobin, candidates, count: int, now: float = 0.0) -> list[str]:
    return [p.pick(candidates, now, RNG).name for _ in range(count)]


def test_equal_weights_rotate_in_order() -> None:
    candidates = fleet(a=1, b=1, c=1)
    assert picks(RoundRobin(), candidates, 9) == ["a", "b", "c"] * 3


def test_every_period_is_exactly_by_weight() -> None:
    candidates = fleet(a=1, b=2, c=3, d=5)
    seq = picks(RoundRobin(), candidates, 11 * 50)
    for start in range(0, len(seq), 11):
        assert Counter(seq[start : start + 11]) == {"a": 1, "b": 2, "c": 3, "d": 5}


def test_equal_light_endpoints_do_not_hold_up_a_heavy_one() -> None:
    seq = picks(RoundRobin(), fleet(a=1, b=1, c=4), 60)
    assert max(len(list(run)) for _, run in groupby(seq)) <= 2


def test_every_prefix_stays_close_to_the_exact_share() -> None:
    rng = random.Random(11)
    for _ in range(200):
        weights = {f"b{i}": rng.randint(1, 12) for i in range(rng.randint(1, 8))}
        total = sum(weights.values())
        seen: Counter[str] = Counter()
        for t, name in enumerate(picks(RoundRobin(), fleet(**weights), 2 * total), start=1):
            seen[name] += 1
            for n, w in weights.items():
                assert abs(seen[n] - t * w / total) < 1.6, weights


def test_fractional_weights_are_spread_in_proportion() -> None:
    seq = picks(RoundRobin(), fleet(a=0.5, b=1.5), 400)
    assert Counter(seq) == {"a": 100, "b": 300}


def test_score_is_none() -> None:
    (a,) = fleet(a=1)
    assert RoundRobin().score(a, 0.0) is None


def test_single_candidate() -> None:
    assert picks(RoundRobin(), fleet(a=3), 3) == ["a"] * 3


def test_refresh_with_unchanged_weights_does_not_disturb_the_order() -> None:
    candidates = fleet(a=1, b=2, c=3)
    plain, refreshed = RoundRobin(), RoundRobin()
    expected = picks(plain, candidates, 60)
    got = []
    for _ in range(60):
        refreshed.refresh(candidates, 0.0)
        got += picks(refreshed, candidates, 1)
    assert got == expected


def test_an_endpoint_leaving_and_coming_back() -> None:
    a, b, c = fleet(a=1, b=1, c=1)
    p = RoundRobin()
    assert picks(p, [a, b, c], 2) == ["a", "b"]
    assert picks(p, [a, b], 4) == ["a", "b", "a", "b"]  # c ejected: no gap, no reset
    back = picks(p, [a, b, c], 30)
    assert Counter(back) == {"a": 10, "b": 10, "c": 10}
    assert Counter(back[:3]) == {"a": 1, "b": 1, "c": 1}  # no burst onto the returning one


def test_a_new_endpoint_joins_the_rotation() -> None:
    a, b, c = fleet(a=1, b=1, c=1)
    p = RoundRobin()
    picks(p, [a, b], 3)
    joined = picks(p, [a, b, c], 30)
    assert Counter(joined) == {"a": 10, "b": 10, "c": 10}
    assert all(Counter(joined[i : i + 3]) == {"a": 1, "b": 1, "c": 1} for i in range(0, 30, 3))


def test_a_warming_endpoint_is_picked_during_its_ramp_and_more_as_it_grows() -> None:
    ramp = BalancerConfig(slow_start=10.0, slow_start_min_weight=0.1)
    steady = SimpleCandidate.new("steady", now=0.0)
    warming = SimpleCandidate.new("warming", now=0.0, config=ramp)
    p = RoundRobin()
    shares = []
    for tick in range(40):  # refresh every 250 ms, 20 picks between refreshes
        now = tick * 0.25
        p.refresh([steady, warming], now)
        got = Counter(picks(p, [steady, warming], 20, now))
        shares.append(got["warming"] / 20)
    assert 0 < sum(shares[:8]) / 8 < 0.25  # picked from the start, but sparingly
    assert sum(shares[-8:]) / 8 > 0.4  # near an even split once ramped
    assert sum(shares[20:]) > sum(shares[:20])
