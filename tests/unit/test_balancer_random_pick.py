"""random: independent picks, proportional to effective weight, reproducible by seed."""

import random
from collections import Counter

import pytest

from gateway.balancer.base import SimpleCandidate
from gateway.balancer.random_pick import RandomPick
from gateway.config.model import BalancerConfig


def fleet(**weights: float) -> list[SimpleCandidate]:
    return [SimpleCandidate.new(n, now=0.0, weight=w) for n, w in weights.items()]


def test_picks_are_roughly_by_weight() -> None:
    candidates = fleet(a=1, b=2, c=7)
    p, rng = RandomPick(), random.Random(42)
    got = Counter(p.pick(candidates, 0.0, rng).name for _ in range(20_000))
    assert got["a"] == pytest.approx(2_000, rel=0.08)
    assert got["b"] == pytest.approx(4_000, rel=0.06)
    assert got["c"] == pytest.approx(14_000, rel=0.03)


def test_same_seed_same_sequence() -> None:
    candidates = fleet(a=1, b=1, c=1)
    runs = [
        [RandomPick().pick(candidates, 0.0, rng).name for _ in range(50)]
        for rng in (random.Random(9), random.Random(9))
    ]
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == 3


def test_a_changed_candidate_set_is_followed() -> None:
    a, b, c = fleet(a=1, b=1, c=1)
    p, rng = RandomPick(), random.Random(3)
    p.refresh([a, b, c], 0.0)
    assert {p.pick([a, c], 0.0, rng).name for _ in range(100)} == {"a", "c"}


def test_slow_start_shrinks_the_share_until_refreshed_after_the_ramp() -> None:
    ramp = BalancerConfig(slow_start=10.0, slow_start_min_weight=0.1)
    steady = SimpleCandidate.new("steady", now=0.0)
    warming = SimpleCandidate.new("warming", now=0.0, config=ramp)
    p, rng = RandomPick(), random.Random(5)
    p.refresh([steady, warming], 0.0)
    early = Counter(p.pick([steady, warming], 0.0, rng).name for _ in range(2_000))
    p.refresh([steady, warming], 10.0)
    late = Counter(p.pick([steady, warming], 10.0, rng).name for _ in range(2_000))
    assert early["warming"] == pytest.approx(2_000 / 11, rel=0.2)
    assert late["warming"] == pytest.approx(1_000, rel=0.1)


def test_score_is_none_and_one_candidate_is_always_picked() -> None:
    (only,) = fleet(only=2)
    p = RandomPick()
    assert p.score(only, 0.0) is None
    assert p.pick([only], 0.0, random.Random(0)) is only
