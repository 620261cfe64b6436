"""weighted_score: alpha * latency / median + beta * (queue / weight) / max(1, median)."""

import random
from collections import Counter

import pytest

from gateway.balancer.base import SimpleCandidate
from gateway.balancer.weighted_score import WeightedScore
from gateway.config.model import BalancerConfig, LatencyConfig, QueueDepthConfig

ALPHA, BETA, DEFAULT_S = 0.6, 0.4, 0.1


def policy(selection: str = "best") -> WeightedScore:
    return WeightedScore(ALPHA, BETA, selection, DEFAULT_S)


def node(
    name: str,
    latency_s: float | None = None,
    weight: float = 1.0,
    config: BalancerConfig | None = None,
):
    c = SimpleCandidate.new(name, now=0.0, weight=weight, config=config)
    if latency_s is not None:
        c.signals.request_started(0.0)
        c.signals.request_finished(latency_s, 0.0)
    return c


def load(c: SimpleCandidate, requests: int) -> None:
    for _ in range(requests):
        c.signals.request_started(0.0)


def closed_loop(p: WeightedScore, fleet, requests: int, seed: int = 0, now: float = 0.0):
    """Place `requests` that all stay in flight; how many each endpoint got."""
    rng = random.Random(seed)
    got: Counter[str] = Counter()
    for _ in range(requests):
        chosen = p.pick(fleet, now, rng)
        chosen.signals.request_started(now)
        got[chosen.name] += 1
    return got


def test_score_is_the_documented_formula() -> None:
    fleet = [node("a", 0.1), node("b", 0.2), node("c", 0.4, weight=2.0)]
    load(fleet[0], 1)
    load(fleet[1], 3)
    load(fleet[2], 8)
    p = policy()
    p.refresh(fleet, 0.0)
    # median latency 0.2; per-weight queues 1, 3, 4 -> median 3
    assert p.fleet.latency_s == pytest.approx(0.2)
    assert p.fleet.queue_per_weight == pytest.approx(3.0)
    assert p.score(fleet[0], 0.0) == pytest.approx(ALPHA * 0.5 + BETA * 1 / 3)
    assert p.score(fleet[2], 0.0) == pytest.approx(ALPHA * 2.0 + BETA * 4 / 3)


def test_queue_term_counts_requests_while_the_fleet_is_nearly_idle() -> None:
    fleet = [node("a", 0.2), node("b", 0.2), node("c", 0.2)]
    load(fleet[0], 1)
    p = policy()
    p.refresh(fleet, 0.0)
    assert p.fleet.queue_per_weight == 0.0
    assert p.score(fleet[0], 0.0) == pytest.approx(ALPHA + BETA * 1.0)
    assert p.score(fleet[1], 0.0) == pytest.approx(ALPHA)


def test_best_picks_the_argmin() -> None:
    fleet = [node("slow", 0.5), node("fast", 0.05), node("busy_fast", 0.05)]
    load(fleet[2], 4)
    p = policy()
    p.refresh(fleet, 0.0)
    assert {p.pick(fleet, 0.0, random.Random(s)).name for s in range(30)} == {"fast"}


def test_ties_go_to_every_tied_candidate() -> None:
    fleet = [node("a", 0.1), node("b", 0.1), node("worse", 0.3)]
    for selection in ("best", "p2c"):
        p = policy(selection)
        p.refresh(fleet, 0.0)
        picks = Counter(p.pick(fleet, 0.0, random.Random(seed)).name for seed in range(400))
        assert picks["a"] > 100 and picks["b"] > 100, selection


@pytest.mark.parametrize("selection", ["best", "p2c"])
def test_weights_divide_load(selection: str) -> None:
    fleet = [node("double", 0.1, weight=2.0), node("single", 0.1, weight=1.0)]
    p = policy(selection)
    p.refresh(fleet, 0.0)
    assert closed_loop(p, fleet, 30) == {"double": 20, "single": 10}


def test_p2c_spreads_by_weight_over_a_larger_fleet() -> None:
    weights = {"w1a": 1.0, "w1b": 1.0, "w2": 2.0, "w4": 4.0}
    fleet = [node(name, 0.1, weight=w) for name, w in weights.items()]
    p = policy("p2c")
    p.refresh(fleet, 0.0)
    got = closed_loop(p, fleet, 400, seed=3)
    for name, w in weights.items():
        assert got[name] == pytest.approx(50 * w, rel=0.15), got


def test_p2c_scores_two_candidates_per_pick() -> None:
    class Counting(WeightedScore):
        calls = 0

        def score(self, candidate, now):
            Counting.calls += 1
            return super().score(candidate, now)

    fleet = [node(f"b{i}", 0.1) for i in range(200)]
    p = Counting(ALPHA, BETA, "p2c", DEFAULT_S)
    p.refresh(fleet, 0.0)
    Counting.calls = 0
    p.pick(fleet, 0.0, random.Random(0))
    assert Counting.calls == 2


def test_a_new_backend_starts_at_the_fleet_median() -> None:
    fleet = [node("fast", 0.1), node("slow", 0.3), node("new")]
    p = policy()
    p.refresh(fleet, 0.0)
    assert p.score(fleet[2], 0.0) == pytest.approx(ALPHA)  # latency term exactly 1
    assert p.pick(fleet, 0.0, random.Random(0)).name == "fast"
    assert p.pick(fleet[1:], 0.0, random.Random(0)).name == "new"


def test_no_stampede_onto_a_new_backend() -> None:
    """A fresh pod takes its share as its queue grows, not every request."""
    fleet = [node(f"old{i}", 0.1) for i in range(4)] + [node("new")]
    p = policy("p2c")
    p.refresh(fleet, 0.0)
    got = closed_loop(p, fleet, 100, seed=5)
    assert got["new"] <= 30


def test_a_recovered_backend_starts_again_from_the_prior() -> None:
    fleet = [node("a", 0.1), node("b", 0.3), node("back", 5.0)]
    fleet[2].signals.reset_for_recovery(now=0.0)
    p = policy()
    p.refresh(fleet, 0.0)
    assert p.score(fleet[2], 0.0) == pytest.approx(ALPHA)


def test_slow_start_eases_a_new_backend_in() -> None:
    ramp = BalancerConfig(slow_start=60.0, slow_start_min_weight=0.1)
    warming = [node("steady", 0.1), node("warming", 0.1, config=ramp)]
    p = policy()
    p.refresh(warming, 0.0)
    early = closed_loop(p, warming, 22)
    assert early["warming"] == 2  # a tenth of the weight: 1 request for every 10

    grown = [node("steady", 0.1), node("warming", 0.1, config=ramp)]
    p.refresh(grown, 60.0)
    assert closed_loop(p, grown, 22, now=60.0)["warming"] == 11


def test_a_slow_endpoint_is_tried_again_after_an_idle_spell() -> None:
    fleet = [node("a", 0.1), node("b", 0.1), node("was_slow", 3.0)]
    p = policy()
    load(fleet[0], 2)
    load(fleet[1], 2)
    p.refresh(fleet, 0.0)
    assert p.pick(fleet, 0.0, random.Random(0)).name != "was_slow"
    p.refresh(fleet, 300.0)
    assert p.pick(fleet, 300.0, random.Random(0)).name == "was_slow"


def test_a_reported_queue_steers_away_until_it_goes_stale() -> None:
    """Long generations (5 s): a report keeps its meaning for seconds, until it is stale."""
    fresh = BalancerConfig(
        queue_depth=QueueDepthConfig(fresh=2.0, stale=10.0), latency=LatencyConfig(idle_decay=1e9)
    )
    fleet = [node("a", 5.0, config=fresh), node("shared", 5.0, config=fresh)]
    load(fleet[0], 2)
    fleet[1].signals.report_queue_depth(20.0, now=0.0)  # other gateways' requests
    p = policy()
    p.refresh(fleet, 1.0)
    assert p.pick(fleet, 1.0, random.Random(0)).name == "a"
    p.refresh(fleet, 10.0)
    assert p.pick(fleet, 10.0, random.Random(0)).name == "shared"


def test_a_report_of_a_fast_backend_fades_as_its_queue_turns_over() -> None:
    """100 ms requests: a second-old report describes a queue that has long drained."""
    fresh = BalancerConfig(
        queue_depth=QueueDepthConfig(fresh=2.0, stale=10.0), latency=LatencyConfig(idle_decay=1e9)
    )
    fleet = [node("a", 0.1, config=fresh), node("shared", 0.1, config=fresh)]
    load(fleet[0], 2)
    fleet[1].signals.report_queue_depth(20.0, now=0.0)
    p = policy()
    p.refresh(fleet, 0.01)
    assert p.pick(fleet, 0.01, random.Random(0)).name == "a"
    p.refresh(fleet, 1.0)
    assert p.pick(fleet, 1.0, random.Random(0)).name == "shared"


def test_p2c_draws_again_when_the_better_of_two_is_a_latency_outlier() -> None:
    """Two slow backends in the sample: a third draw, so outliers do not keep p2c's share."""
    fleet = [node(f"slow{i}", 1.0) for i in range(2)] + [node("fast", 0.1)]
    fleet += [node(f"fast{i}", 0.1) for i in range(7)]
    p = policy()
    p.refresh(fleet, 0.0)
    slow_picks = sum(
        p.pick(fleet, 0.0, random.Random(seed)).name.startswith("slow") for seed in range(2000)
    )
    # Plain p2c would pick a slow one whenever both draws are slow: 2/10 * 1/9 = 2.2%.
    assert slow_picks / 2000 < 0.01


def test_unknown_selection_is_rejected() -> None:
    with pytest.raises(ValueError):
        WeightedScore(ALPHA, BETA, "first", DEFAULT_S)
