"""EndpointHealth on its own: the breaker rule, open durations, half-open trials."""

import pytest

from gateway.config.model import CircuitBreakerConfig, HealthCheckConfig, OutlierDetectionConfig
from gateway.health import (
    CircuitState,
    EndpointHealth,
    Outcome,
    Reason,
    Transition,
)

FAILURES = [Outcome.HTTP_5XX, Outcome.GATEWAY_FAILURE, Outcome.LOCAL_ORIGIN_FAILURE]


def make(
    failure_threshold: int = 5,
    half_open_requests: int = 1,
    base_s: float = 30.0,
    max_s: float = 300.0,
    **kwargs: object,
) -> EndpointHealth:
    return EndpointHealth(
        OutlierDetectionConfig(base_ejection_time=base_s, max_ejection_time=max_s),
        CircuitBreakerConfig(
            failure_threshold=failure_threshold, half_open_requests=half_open_requests
        ),
        **kwargs,  # type: ignore[arg-type]
    )


def trip(health: EndpointHealth, now: float, outcome: Outcome = Outcome.HTTP_5XX) -> Transition:
    """Record failures until the breaker opens; returns the opening transition."""
    for _ in range(health.breaker.failure_threshold):
        transition = health.record(outcome, now)
        if transition is not None:
            return transition
    raise AssertionError("the breaker did not open")


def reopen_after_trial(health: EndpointHealth, now: float) -> Transition:
    assert health.try_acquire(now)
    transition = health.record(Outcome.LOCAL_ORIGIN_FAILURE, now)
    assert transition is not None
    return transition


@pytest.mark.parametrize("outcome", FAILURES)
def test_breaker_opens_after_exactly_failure_threshold(outcome: Outcome) -> None:
    health = make(failure_threshold=4)
    for _ in range(3):
        assert health.record(outcome, 0.0) is None
        assert health.try_acquire(0.0)
    transition = health.record(outcome, 0.0)
    assert transition == Transition(
        CircuitState.CLOSED, CircuitState.OPEN, Reason.CIRCUIT_BREAKER, "", 0.0
    )
    assert health.state is CircuitState.OPEN
    assert not health.try_acquire(0.0)
    assert not health.is_routable(0.0)
    assert health.last_reason == Reason.CIRCUIT_BREAKER


def test_mixed_failure_kinds_count_together() -> None:
    health = make(failure_threshold=3)
    health.record(Outcome.HTTP_5XX, 0.0)
    health.record(Outcome.GATEWAY_FAILURE, 0.0)
    assert health.record(Outcome.LOCAL_ORIGIN_FAILURE, 0.0) is not None


def test_success_resets_the_counters() -> None:
    health = make(failure_threshold=3)
    for _ in range(10):
        health.record(Outcome.GATEWAY_FAILURE, 0.0)
        health.record(Outcome.GATEWAY_FAILURE, 0.0)
        assert health.record(Outcome.SUCCESS, 0.0) is None
        assert (health.consecutive_failures, health.consecutive_gateway_failures) == (0, 0)
    assert health.state is CircuitState.CLOSED


def test_plain_5xx_breaks_a_gateway_failure_run() -> None:
    health = make(failure_threshold=0)
    health.record(Outcome.GATEWAY_FAILURE, 0.0)
    health.record(Outcome.LOCAL_ORIGIN_FAILURE, 0.0)
    assert health.consecutive_gateway_failures == 2
    health.record(Outcome.HTTP_5XX, 0.0)
    assert (health.consecutive_failures, health.consecutive_gateway_failures) == (3, 0)


def test_cancelled_counts_for_nothing() -> None:
    health = make(failure_threshold=2)
    health.record(Outcome.HTTP_5XX, 0.0)
    for _ in range(100):
        assert health.record(Outcome.CANCELLED, 0.0) is None
    assert health.consecutive_failures == 1
    assert health.interval_requests == 1
    assert health.record(Outcome.HTTP_5XX, 0.0) is not None  # the run was not broken either


def test_breaker_off_with_zero_threshold() -> None:
    health = make(failure_threshold=0)
    for _ in range(1000):
        assert health.record(Outcome.HTTP_5XX, 0.0) is None
    assert health.state is CircuitState.CLOSED


def test_returns_after_base_time_then_trial_success_closes() -> None:
    health = make()
    trip(health, now=100.0)
    assert health.opened_until == 130.0
    assert not health.try_acquire(129.999)
    assert not health.is_routable(129.999)
    assert health.is_routable(130.0)
    assert health.state is CircuitState.OPEN  # is_routable does not move the state
    assert health.try_acquire(130.0)
    assert health.state is CircuitState.HALF_OPEN
    transition = health.record(Outcome.SUCCESS, 131.0)
    assert transition is not None
    assert transition.recovered
    assert transition.reason == Reason.TRIAL_SUCCEEDED
    assert health.state is CircuitState.CLOSED
    assert health.opened_until is None
    assert health.try_acquire(131.0)


def test_open_duration_is_base_times_count_capped() -> None:
    health = make(base_s=30.0, max_s=100.0)
    now = 0.0
    trip(health, now)
    durations = [health.opened_until - now]  # type: ignore[operator]
    for _ in range(5):
        now = health.opened_until  # type: ignore[assignment]
        reopen_after_trial(health, now)
        durations.append(health.opened_until - now)  # type: ignore[operator]
    assert durations == [30.0, 60.0, 90.0, 100.0, 100.0, 100.0]
    # The multiplier stops growing once the cap is reached (Envoy), so decay stays bounded.
    assert health.ejection_count == 4


def test_trial_failure_reopens_for_longer() -> None:
    health = make()
    trip(health, 0.0)
    transition = reopen_after_trial(health, 30.0)
    assert (transition.from_state, transition.to_state) == (
        CircuitState.HALF_OPEN,
        CircuitState.OPEN,
    )
    assert transition.reason == Reason.TRIAL_FAILED
    assert not transition.recovered
    assert health.ejection_count == 2
    assert health.opened_until == 90.0


@pytest.mark.parametrize("permits", [1, 2, 5])
def test_half_open_admits_exactly_the_trial_count(permits: int) -> None:
    health = make(half_open_requests=permits)
    trip(health, 0.0)
    granted = [health.try_acquire(30.0) for _ in range(50)]
    assert granted.count(True) == permits
    assert granted[:permits] == [True] * permits
    assert not health.is_routable(30.0)


def test_cancelled_trial_returns_its_permit() -> None:
    health = make()
    trip(health, 0.0)
    assert health.try_acquire(30.0)
    assert not health.try_acquire(30.0)
    assert health.record(Outcome.CANCELLED, 31.0) is None
    assert health.state is CircuitState.HALF_OPEN
    assert health.is_routable(31.0)
    assert health.try_acquire(31.0)
    assert not health.try_acquire(31.0)


def test_first_trial_outcome_decides_with_several_permits() -> None:
    health = make(half_open_requests=3)
    trip(health, 0.0)
    assert all(health.try_acquire(30.0) for _ in range(3))
    assert health.record(Outcome.SUCCESS, 31.0) is not None
    assert health.state is CircuitState.CLOSED
    # The other two trials land in CLOSED as ordinary outcomes.
    assert health.record(Outcome.HTTP_5XX, 32.0) is None
    assert health.consecutive_failures == 1


def test_late_outcomes_while_open_are_ignored() -> None:
    health = make()
    trip(health, 0.0)
    assert health.record(Outcome.SUCCESS, 1.0) is None
    assert health.record(Outcome.HTTP_5XX, 1.0) is None
    assert health.state is CircuitState.OPEN
    assert health.opened_until == 30.0
    assert health.interval_requests == 5


def test_outcome_in_half_open_without_trial_is_ignored() -> None:
    health = make(half_open_requests=2)
    trip(health, 0.0)
    assert health.try_acquire(30.0)
    assert health.record(Outcome.CANCELLED, 30.0) is None  # trial handed back
    assert health.record(Outcome.HTTP_5XX, 30.0) is None  # straggler: no trial in flight
    assert health.state is CircuitState.HALF_OPEN


def test_decay_after_closed_intervals() -> None:
    health = make()
    now = 0.0
    trip(health, now)
    for _ in range(2):
        now = health.opened_until  # type: ignore[assignment]
        reopen_after_trial(health, now)
    assert health.ejection_count == 3
    now = health.opened_until  # type: ignore[assignment]
    assert health.try_acquire(now)
    health.record(Outcome.SUCCESS, now)
    closed_at = now
    health.decay_ejection_count(closed_at + 5.0, interval_s=10.0)  # closed only 5 s
    assert health.ejection_count == 3
    for expected, sweep in ((2, 10.0), (1, 20.0), (0, 30.0), (0, 40.0)):
        health.decay_ejection_count(closed_at + sweep, interval_s=10.0)
        assert health.ejection_count == expected
    trip(health, closed_at + 50.0)
    assert health.opened_until == closed_at + 50.0 + 30.0  # back to the base duration


def test_no_decay_while_open_or_failing_probes() -> None:
    health = make(active=HealthCheckConfig())
    trip(health, 0.0)
    health.decay_ejection_count(1000.0, interval_s=10.0)
    assert health.ejection_count == 1
    assert health.try_acquire(1000.0)
    health.record(Outcome.SUCCESS, 1000.0)
    assert health.active is not None
    health.active.record(False, 1000.0)
    health.decay_ejection_count(2000.0, interval_s=10.0)
    assert health.ejection_count == 1
    health.active.record(True, 2000.0)
    health.active.record(True, 2000.0)
    health.decay_ejection_count(2010.0, interval_s=10.0)
    assert health.ejection_count == 0


def test_failing_probes_make_it_unroutable_without_touching_the_circuit() -> None:
    health = make(active=HealthCheckConfig(unhealthy_threshold=2))
    assert health.active is not None
    health.active.record(True, 0.0)
    health.active.record(False, 1.0)
    assert health.is_routable(1.0)
    health.active.record(False, 2.0)
    assert not health.is_routable(2.0)
    assert health.state is CircuitState.CLOSED
    assert health.consecutive_failures == 0
    assert health.try_acquire(2.0)  # circuit only: the balancer filters on is_routable


def test_listener_sees_every_transition_including_half_open() -> None:
    seen: list[Transition] = []
    health = make(name="http://10.0.0.1:8000", listener=seen.append)
    opened = trip(health, 0.0)
    health.try_acquire(30.0)
    closed = health.record(Outcome.SUCCESS, 30.5)
    assert [(t.from_state, t.to_state, t.reason) for t in seen] == [
        (CircuitState.CLOSED, CircuitState.OPEN, Reason.CIRCUIT_BREAKER),
        (CircuitState.OPEN, CircuitState.HALF_OPEN, Reason.OPEN_TIME_ELAPSED),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED, Reason.TRIAL_SUCCEEDED),
    ]
    assert seen[0] is opened and seen[2] is closed
    assert {t.endpoint for t in seen} == {"http://10.0.0.1:8000"}
    assert [t.at for t in seen] == [0.0, 30.0, 30.5]


def test_snapshot_reports_state_for_admin() -> None:
    health = make(active=HealthCheckConfig())
    health.record(Outcome.SUCCESS, 0.0)
    health.record(Outcome.HTTP_5XX, 0.0)
    snap = health.snapshot(0.0)
    assert snap["state"] == "closed"
    assert snap["routable"] is True
    assert snap["consecutive_failures"] == 1
    assert (snap["interval_successes"], snap["interval_failures"]) == (1, 1)
    assert snap["active_check"] == "unknown"
    assert snap["open_remaining_s"] is None
    trip(health, 10.0)
    snap = health.snapshot(25.0)
    assert snap["state"] == "open"
    assert snap["routable"] is False
    assert snap["open_remaining_s"] == 15.0
    assert snap["ejection_count"] == 1
    assert snap["last_reason"] == Reason.CIRCUIT_BREAKER
