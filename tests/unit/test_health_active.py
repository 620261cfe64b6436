import random

import pytest

from gateway.config.model import HealthCheckConfig
from gateway.health import ActiveCheckState, CheckState, Reason, Transition


def make(unhealthy: int = 3, healthy: int = 2, **kwargs: object) -> ActiveCheckState:
    settings = HealthCheckConfig(unhealthy_threshold=unhealthy, healthy_threshold=healthy)
    return ActiveCheckState(settings, **kwargs)  # type: ignore[arg-type]


def test_unknown_counts_as_passing_and_first_answer_decides() -> None:
    up = make()
    assert up.state is CheckState.UNKNOWN and up.passing
    t = up.record(True, 1.0)
    assert t == Transition(CheckState.UNKNOWN, CheckState.HEALTHY, Reason.CHECK_PASSED, "", 1.0)
    down = make(unhealthy=5)
    t = down.record(False, 1.0)
    assert t is not None and t.to_state is CheckState.UNHEALTHY
    assert not down.passing


@pytest.mark.parametrize("threshold", [1, 2, 3, 7])
def test_unhealthy_after_exactly_the_threshold(threshold: int) -> None:
    check = make(unhealthy=threshold)
    check.record(True, 0.0)
    for i in range(threshold - 1):
        assert check.record(False, float(i)) is None
        assert check.passing
    t = check.record(False, 10.0)
    assert t is not None and (t.from_state, t.to_state) == (
        CheckState.HEALTHY,
        CheckState.UNHEALTHY,
    )
    assert t.reason == Reason.CHECK_FAILED
    assert check.record(False, 11.0) is None  # no repeated transitions


@pytest.mark.parametrize("threshold", [1, 2, 4])
def test_healthy_again_after_exactly_the_threshold(threshold: int) -> None:
    check = make(healthy=threshold)
    check.record(False, 0.0)
    for i in range(threshold - 1):
        assert check.record(True, float(i)) is None
        assert not check.passing
    t = check.record(True, 10.0)
    assert t is not None and t.to_state is CheckState.HEALTHY
    assert check.passing


def test_alternating_results_never_flip_with_thresholds_above_one() -> None:
    check = make(unhealthy=2, healthy=2)
    check.record(True, 0.0)
    for i in range(50):
        assert check.record(i % 2 == 0, float(i)) is None
    assert check.state is CheckState.HEALTHY


def test_listener_and_name() -> None:
    seen: list[Transition] = []
    check = make(unhealthy=1, healthy=1, name="b1", listener=seen.append)
    check.record(False, 1.0)
    check.record(True, 2.0)
    assert [(t.to_state, t.endpoint, t.at) for t in seen] == [
        (CheckState.UNHEALTHY, "b1", 1.0),
        (CheckState.HEALTHY, "b1", 2.0),
    ]


def test_jitter_bounds_and_spread() -> None:
    check = ActiveCheckState(HealthCheckConfig(interval=5.0, jitter_percent=20))
    rng = random.Random(7)
    delays = [check.next_delay_s(rng) for _ in range(2000)]
    assert min(delays) >= 4.0 and max(delays) <= 6.0
    assert min(delays) < 4.1 and max(delays) > 5.9  # the whole range is used
    assert abs(sum(delays) / len(delays) - 5.0) < 0.05  # centred on the interval
    firsts = [check.first_delay_s(rng) for _ in range(2000)]
    assert min(firsts) >= 0.0 and max(firsts) <= 1.0


def test_no_jitter_is_exact_and_rng_is_deterministic() -> None:
    exact = ActiveCheckState(HealthCheckConfig(interval=5.0, jitter_percent=0))
    assert exact.next_delay_s(random.Random(1)) == 5.0
    assert exact.first_delay_s(random.Random(1)) == 0.0
    check = ActiveCheckState(HealthCheckConfig())
    a, b = random.Random(42), random.Random(42)
    assert [check.next_delay_s(a) for _ in range(5)] == [check.next_delay_s(b) for _ in range(5)]
