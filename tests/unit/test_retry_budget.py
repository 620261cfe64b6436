import pytest

from gateway.config import ConfigError, parse_config
from gateway.retry_budget import RetryBudget


def spend_all(budget: RetryBudget, now: float) -> int:
    spent = 0
    while budget.try_spend(now):
        spent += 1
        assert spent < 100_000
    return spent


def test_quiet_service_can_still_retry_at_the_floor() -> None:
    budget = RetryBudget(20, 0.5, window_s=10.0)
    assert spend_all(budget, 0.0) == 5


def test_caps_retries_at_the_share_under_fleet_wide_failure() -> None:
    """Every request fails and wants a retry: retries stay at ~budget_percent of requests."""
    budget = RetryBudget(20, 1, window_s=10.0)
    requests = retries = 0
    now = 0.0
    while now < 60.0:  # 100 requests/s for 60 s
        budget.record_request(now)
        requests += 1
        retries += budget.try_spend(now)
        now += 0.01
    # Each 10 s window allows 20% of 1000 requests + 10 floor = 210 retries.
    assert retries <= 6 * 210
    assert retries >= 6 * 200
    assert retries / requests < 0.22


def test_no_window_ever_exceeds_its_allowance() -> None:
    budget = RetryBudget(10, 0, window_s=1.0, buckets=4)
    events: list[tuple[float, str]] = []
    for i in range(400):
        now = i * 0.01
        budget.record_request(now)
        events.append((now, "req"))
        if budget.try_spend(now):
            events.append((now, "retry"))
    # At bucket granularity (0.25 s), any aligned 1 s window holds <= 10% of its requests plus
    # the requests of the bucket that just rolled out.
    for start in [k * 0.25 for k in range(13)]:
        window = [kind for t, kind in events if start <= t < start + 1.0]
        assert window.count("retry") <= 0.1 * (window.count("req") + 25) + 1e-9


def test_refills_as_the_window_slides() -> None:
    budget = RetryBudget(50, 0, window_s=10.0)
    for _ in range(10):
        budget.record_request(0.0)
    assert spend_all(budget, 0.0) == 5
    assert not budget.try_spend(9.9)
    for _ in range(4):
        budget.record_request(10.5)  # the first bucket has left the window
    assert spend_all(budget, 10.5) == 2
    assert budget.available(30.0) == 0.0  # everything expired, no floor


def test_retries_do_not_fund_retries() -> None:
    budget = RetryBudget(100, 0)
    budget.record_request(0.0)
    assert budget.try_spend(0.0)
    assert not budget.try_spend(0.0)


def test_zero_budget_and_zero_floor_never_retries() -> None:
    budget = RetryBudget(0, 0)
    for i in range(100):
        budget.record_request(float(i))
        assert not budget.try_spend(float(i))


@pytest.mark.parametrize(
    ("yaml", "path"),
    [
        ("retries: {budget_percent: -1}", "retries.budget_percent"),
        ("retries: {min_retries_per_second: -1}", "retries.min_retries_per_second"),
        ("hedging: {budget_percent: 101}", "hedging.budget_percent"),
    ],
)
def test_the_owning_section_rejects_a_bad_budget_by_its_field_path(yaml: str, path: str) -> None:
    with pytest.raises(ConfigError, match=f"{path}: "):
        parse_config(yaml + "\nbackends: [{url: 'http://127.0.0.1:8000'}]\n")
