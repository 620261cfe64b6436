"""Invariants of the health machines under random event sequences (hypothesis)."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.model import CircuitBreakerConfig, OutlierDetectionConfig
from gateway.health import (
    CircuitState,
    EndpointHealth,
    Outcome,
    OutlierDetector,
    Reason,
    Transition,
)

OUTLIER_REASONS = {Reason.CONSECUTIVE_5XX, Reason.CONSECUTIVE_GATEWAY_FAILURE, Reason.SUCCESS_RATE}

# Failures are over-represented so circuits actually open, close and re-open.
outcomes = st.sampled_from(
    [
        Outcome.SUCCESS,
        Outcome.SUCCESS,
        Outcome.HTTP_5XX,
        Outcome.GATEWAY_FAILURE,
        Outcome.LOCAL_ORIGIN_FAILURE,
        Outcome.CANCELLED,
    ]
)
endpoint = st.integers(0, 9)
events = st.lists(
    st.one_of(
        st.tuples(st.just("request"), endpoint, outcomes),  # acquire, then record at once
        st.tuples(st.just("begin"), endpoint),  # acquire and keep in flight
        st.tuples(st.just("finish"), endpoint, outcomes),  # record one kept in flight
        st.tuples(st.just("advance"), st.floats(0.0, 40.0)),
        st.tuples(st.just("sweep")),
    ),
    min_size=20,
    max_size=400,
)


@settings(max_examples=150, deadline=None)
@given(
    events=events,
    n=st.integers(1, 10),
    percent=st.sampled_from([0, 10, 25, 50, 100]),
    breaker_threshold=st.sampled_from([0, 3]),
    permits=st.integers(1, 3),
)
def test_random_sequences_keep_every_invariant(
    events: list[tuple], n: int, percent: int, breaker_threshold: int, permits: int
) -> None:
    outlier = OutlierDetectionConfig(
        consecutive_5xx=4,
        consecutive_gateway_failure=3,
        max_ejection_percent=percent,
        base_ejection_time=30.0,
        max_ejection_time=100.0,
        success_rate_minimum_hosts=1,
        success_rate_request_volume=2,
        success_rate_stdev_factor=0.5,
    )
    breaker = CircuitBreakerConfig(failure_threshold=breaker_threshold, half_open_requests=permits)
    seen: list[Transition] = []
    fleet = [EndpointHealth(outlier, breaker, name=str(i), listener=seen.append) for i in range(n)]
    detector = OutlierDetector(outlier)
    allowed = max(1, math.floor(percent * n / 100))
    # Trials each endpoint has been granted in its current half-open episode, and still owes.
    granted = [0] * n
    in_flight = [0] * n
    now = 0.0

    for event in events:
        before = len(seen)
        kind = event[0]
        if kind == "advance":
            now += event[1]
        elif kind == "sweep":
            detector.sweep(fleet, now)
        else:
            i = event[1] % n
            if kind in ("request", "begin") and fleet[i].try_acquire(now):
                in_flight[i] += 1
                if fleet[i].state is CircuitState.HALF_OPEN:
                    granted[i] += 1
            if kind in ("request", "finish") and in_flight[i] > 0:
                in_flight[i] -= 1
                was_half_open = fleet[i].state is CircuitState.HALF_OPEN
                detector.on_outcome(fleet[i], fleet, event[2], now)
                if was_half_open and event[2] is Outcome.CANCELLED:
                    granted[i] -= 1

        for t in seen[before:]:
            i = int(t.endpoint)
            if t.to_state is CircuitState.HALF_OPEN:
                granted[i] = 0
            if t.to_state is CircuitState.OPEN:
                # Open durations are base x count, within [base, cap].
                duration = fleet[i].opened_until - t.at  # type: ignore[operator]
                assert 30.0 - 1e-9 <= duration <= 100.0 + 1e-9
                assert fleet[i].ejection_count >= 1
            if t.reason in OUTLIER_REASONS:
                # Outlier rules never push the open count past the cap (one always allowed).
                assert sum(h.state is not CircuitState.CLOSED for h in fleet) <= allowed
        if breaker_threshold == 0 and percent == 50 and n >= 2:
            # The default cap equals the panic threshold: outlier rules alone never cause panic.
            assert not detector.in_panic(fleet, now)
        for i, health in enumerate(fleet):
            if health.state is CircuitState.HALF_OPEN:
                assert granted[i] <= permits  # never more trials than permits
            assert health.ejection_count <= math.ceil(100.0 / 30.0)
            assert health.consecutive_failures >= health.consecutive_gateway_failures >= 0


@settings(max_examples=100, deadline=None)
@given(permits=st.integers(1, 5), callers=st.integers(1, 200))
def test_concurrent_acquires_in_half_open_never_exceed_permits(permits: int, callers: int) -> None:
    health = EndpointHealth(
        OutlierDetectionConfig(),
        CircuitBreakerConfig(failure_threshold=1, half_open_requests=permits),
    )
    health.record(Outcome.HTTP_5XX, 0.0)
    granted = sum(health.try_acquire(30.0) for _ in range(callers))
    assert granted == min(permits, callers)
