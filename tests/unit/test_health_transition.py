import logging

import pytest

from gateway.health import CheckState, Reason, Transition
from gateway.health.transition import CircuitState


@pytest.mark.parametrize(
    ("from_state", "to_state", "level"),
    [
        (CheckState.UNKNOWN, CheckState.HEALTHY, logging.INFO),  # every healthy start
        (CheckState.UNHEALTHY, CheckState.HEALTHY, logging.INFO),
        (CheckState.HEALTHY, CheckState.UNHEALTHY, logging.WARNING),
        (CheckState.UNKNOWN, CheckState.UNHEALTHY, logging.WARNING),
        (CircuitState.CLOSED, CircuitState.OPEN, logging.WARNING),
        (CircuitState.HALF_OPEN, CircuitState.OPEN, logging.WARNING),
        (CircuitState.OPEN, CircuitState.HALF_OPEN, logging.INFO),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED, logging.INFO),
    ],
)
def test_only_losing_traffic_is_a_warning(
    from_state: CircuitState | CheckState, to_state: CircuitState | CheckState, level: int
) -> None:
    assert Transition(from_state, to_state, Reason.CHECK_PASSED).log_level == level
