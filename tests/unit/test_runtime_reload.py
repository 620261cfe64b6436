"""Runtime.reconfigure: new components from the new sections; what stays keeps its state."""

from __future__ import annotations

import random

from gateway.config import parse_config
from gateway.health.outcome import Outcome
from gateway.runtime import Runtime

BACKENDS = (
    "backends: [{url: 'http://10.0.0.1:8000', name: a}, {url: 'http://10.0.0.2:8000', name: b}]\n"
)


def runtime(extra: str = "") -> Runtime:
    return Runtime(parse_config(BACKENDS + extra), clock=lambda: 0.0, rng=random.Random(1))


def test_a_section_that_did_not_change_keeps_its_component_and_what_it_learned() -> None:
    rt = runtime()
    policy, budget, hedging = rt.policy_for("default"), rt.retry_budget, rt.hedging
    rt.reconfigure(parse_config(BACKENDS + "outlier_detection: {consecutive_5xx: 3}\n"))
    assert rt.policy_for("default") is policy
    assert (rt.retry_budget, rt.hedging) == (budget, hedging)


def test_a_changed_section_builds_its_component_anew() -> None:
    rt = runtime()
    policy, budget, hedging, detector = (
        rt.policy_for("default"),
        rt.retry_budget,
        rt.hedging,
        rt.detector,
    )
    rt.reconfigure(
        parse_config(
            BACKENDS + "balancer: {policy: least_request}\nretries: {budget_percent: 5}\n"
            "hedging: {delay: 50ms}\noutlier_detection: {consecutive_5xx: 3}\n"
        )
    )
    assert (
        rt.policy_for("default") is not policy and rt.policy_for("default").name == "least_request"
    )
    assert rt.retry_budget is not budget and rt.retry_budget.budget_percent == 5
    assert rt.hedging is not hedging and rt.hedging.delay_s("default", False) == 0.05
    assert rt.detector is not detector and rt.detector.config.consecutive_5xx == 3


def test_backends_that_stay_keep_signals_and_health_and_follow_the_new_sections() -> None:
    rt = runtime("circuit_breaker: {enabled: false}\n")
    a = rt.fleet.endpoints["a"]
    a.signals.request_started(0.0)
    a.signals.request_finished(0.2, 0.0)
    for _ in range(4):
        rt.record_outcome(a, Outcome.HTTP_5XX, 0.0)
    assert a.health.consecutive_failures == 4  # one short of the default 5
    rt.reconfigure(
        parse_config(
            BACKENDS + "circuit_breaker: {enabled: false}\n"
            "outlier_detection: {consecutive_5xx: 5, max_ejection_percent: 100}\n"
            "balancer: {latency: {decay: 1s}}\ntimeouts: {per_try: 5s}\n"
        )
    )
    assert rt.fleet.endpoints["a"] is a
    assert (a.signals.samples, a.health.consecutive_failures) == (1, 4)
    assert a.signals.config.latency.decay == 1.0 and a.signals.failure_cap_s == 5.0
    transition = rt.record_outcome(a, Outcome.HTTP_5XX, 0.0)  # the fifth, under the new cap
    assert transition is not None and transition.reason == "consecutive_5xx"


def test_active_checks_turned_off_and_on_by_reload() -> None:
    rt = runtime()
    a = rt.fleet.endpoints["a"]
    assert a.health.active is not None
    a.health.active.record(False, 0.0)  # the first answer is decisive
    assert not a.routable(0.0)
    rt.reconfigure(parse_config(BACKENDS + "health_check: {enabled: false}\n"))
    assert a.health.active is None and a.routable(0.0)  # nothing would ever clear the verdict
    rt.reconfigure(parse_config(BACKENDS + "health_check: {interval: 1s}\n"))
    assert a.health.active is not None and a.health.active.config.interval == 1.0
    assert a.routable(0.0)  # starts UNKNOWN, like a new backend
