"""The fleet simulator: deterministic, conserving, driven by the gateway's own code."""

from __future__ import annotations

import dataclasses
import statistics

import pytest

from gateway.attempt import Attempt
from gateway.balancer.least_request import LeastRequest
from gateway.config.model import GatewayConfig, TimeoutsConfig
from gateway.endpoint import Endpoint
from gateway.health.outlier import OutlierDetector
from gateway.load.signals import EndpointSignals
from gateway.runtime import Runtime
from loadtests.simulate.arrivals import arrivals
from loadtests.simulate.cli import main
from loadtests.simulate.compare import POLICIES, compare
from loadtests.simulate.engine import PolicyChoice, Simulation, simulate
from loadtests.simulate.oracle import oracle
from loadtests.simulate.scenarios import SCENARIOS, build_scenario
from loadtests.simulate.stats import percentile

ALL_POLICIES = list(POLICIES)
SHORT_TIMEOUT = dataclasses.replace(
    GatewayConfig(), timeouts=dataclasses.replace(TimeoutsConfig(), per_try=0.5)
)


@pytest.mark.parametrize("choice", ALL_POLICIES, ids=lambda c: c.label)
def test_same_seed_same_run(choice: PolicyChoice) -> None:
    scenario = build_scenario("slow_pod", 6, 0.8)
    a = simulate(scenario, choice, replicas=3, requests=1500, seed=7)
    b = simulate(scenario, choice, replicas=3, requests=1500, seed=7)
    assert a.latencies_s == b.latencies_s
    assert a.tries_per_pod == b.tries_per_pod
    assert a.failed == b.failed
    c = simulate(scenario, choice, replicas=3, requests=1500, seed=8)
    assert c.latencies_s != a.latencies_s


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_arrival_succeeds_or_fails(name: str) -> None:
    scenario = build_scenario(name, 5, 0.8)
    for choice in (ALL_POLICIES[0], ALL_POLICIES[2]):
        result = simulate(scenario, choice, 2, 1200, seed=3, gateway=SHORT_TIMEOUT)
        assert result.succeeded + result.failed == 1200
        assert sum(result.tries_per_pod) >= 1200 - result.failed
        assert all(latency > 0 for latency in result.latencies_s)


def test_failures_are_counted_as_failures() -> None:
    scenario = build_scenario("failing_pod", 4, 0.5)
    no_retries = dataclasses.replace(
        GatewayConfig(), retries=dataclasses.replace(GatewayConfig().retries, attempts=1)
    )
    result = simulate(scenario, ALL_POLICIES[2], 1, 2000, seed=1, gateway=no_retries)
    # The breaker opens after 5 consecutive 500s, so only a handful reach the client.
    assert 5 <= result.failed < 50
    assert result.tries_per_pod[0] == result.failed


def test_with_the_default_retries_no_500_reaches_the_client() -> None:
    scenario = build_scenario("failing_pod", 4, 0.5)
    result = simulate(scenario, ALL_POLICIES[2], 1, 2000, seed=1)
    assert result.failed == 0
    assert result.tries_per_pod[0] >= 5  # the failing pod was tried, and its 500s resent


def test_hung_pod_times_out_then_is_taken_out_by_probes() -> None:
    scenario = build_scenario("hanging_pod", 4, 0.5)
    no_timeout_retry = dataclasses.replace(
        SHORT_TIMEOUT,
        retries=dataclasses.replace(SHORT_TIMEOUT.retries, retry_on=("connect-failure", 500)),
        hedging=dataclasses.replace(SHORT_TIMEOUT.hedging, enabled=False),
    )
    result = simulate(scenario, ALL_POLICIES[2], 1, 4000, seed=1, gateway=no_timeout_retry)
    assert result.failed == result.tries_per_pod[0] > 0
    assert result.tries_per_pod[0] < 0.05 * 4000  # round robin would send it a quarter
    assert max(result.latencies_s) < 0.5  # no success waited on the hung pod
    # With the default retry_on a timed-out try is resent elsewhere: nobody sees the hang fail.
    assert simulate(scenario, ALL_POLICIES[2], 1, 4000, seed=1, gateway=SHORT_TIMEOUT).failed == 0


def test_hedges_rescue_tries_stuck_on_a_hung_pod_within_their_budget() -> None:
    scenario = build_scenario("hanging_pod", 4, 0.5)
    no_timeout_retry = dataclasses.replace(
        SHORT_TIMEOUT,
        retries=dataclasses.replace(SHORT_TIMEOUT.retries, retry_on=("connect-failure", 500)),
    )
    result = simulate(scenario, ALL_POLICIES[2], 1, 4000, seed=1, gateway=no_timeout_retry)
    assert result.extra["hedges_won"] > 0
    assert result.failed < result.tries_per_pod[0]  # some stuck tries lost to their hedge
    assert result.extra["hedges"] <= 0.05 * 4000 + 10  # budget: 5% plus the 1/s floor


def test_oracle_never_worse_than_a_policy_on_the_same_arrivals() -> None:
    # Alike pods: sending each request where it finishes first is then the best possible.
    scenario = build_scenario("baseline", 4, 0.8)
    rows = compare(scenario, replicas=2, requests=3000, seed=5)
    assert rows[0].label == "oracle"
    assert all(rows[0].p99_ms <= row.p99_ms for row in rows[1:])
    reference = statistics.fmean(oracle(scenario, 3000, 2, 5).latencies_s)
    for choice in ALL_POLICIES:
        policy = simulate(scenario, choice, 2, 3000, 5)
        assert reference <= statistics.fmean(policy.latencies_s), choice.label


def test_policies_and_oracle_see_the_same_arrivals() -> None:
    scenario = build_scenario("baseline", 3, 0.5)
    first = list(arrivals(scenario, 500, 4, seed=2))
    assert first == list(arrivals(scenario, 500, 4, seed=2))
    times = [t for t, _, _ in first]
    assert times == sorted(times)
    rate = 500 / times[-1]
    assert 0.8 * 0.5 * scenario.capacity_rps < rate < 1.2 * 0.5 * scenario.capacity_rps


def test_ramp_raises_the_rate() -> None:
    scenario = build_scenario("ramp", 4, 0.7)
    times = [t for t, _, _ in arrivals(scenario, 4000, 1, seed=1)]
    first_half = times[1999] - times[0]
    second_half = times[-1] - times[2000]
    assert second_half < 0.75 * first_half


def test_the_simulator_runs_the_gateway_code(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"exit": 0, "pick": 0, "outcome": 0, "finished": 0}

    def spy(cls: type, name: str, key: str) -> None:
        real = getattr(cls, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            calls[key] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    spy(Attempt, "end", "exit")  # what __exit__ calls; the simulator calls it directly
    spy(LeastRequest, "pick", "pick")
    spy(OutlierDetector, "on_outcome", "outcome")
    spy(EndpointSignals, "request_finished", "finished")
    sim = Simulation(build_scenario("baseline", 4, 0.6), ALL_POLICIES[4], 2, 800, seed=1)
    assert all(isinstance(r.runtime, Runtime) for r in sim.replicas)
    assert all(isinstance(e, Endpoint) for r in sim.replicas for e in r.endpoints)
    result = sim.run()
    tries = sum(result.tries_per_pod)
    assert calls["pick"] == tries == calls["exit"] == calls["outcome"] == calls["finished"]
    assert tries >= 800


def test_each_replica_keeps_its_own_signals() -> None:
    sim = Simulation(build_scenario("baseline", 4, 0.6), ALL_POLICIES[0], 3, 600, seed=1)
    sim.run()
    samples = [[e.signals.samples for e in r.endpoints] for r in sim.replicas]
    assert all(sum(s) > 0 for s in samples)
    assert samples[0] != samples[1]
    first = sim.replicas[0].endpoints[0].signals
    assert all(r.endpoints[0].signals is not first for r in sim.replicas[1:])


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0


def test_cli_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "-M", "4", "-G", "2", "-n", "500", "--policy", "round_robin"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| oracle |" in out and "| round_robin |" in out
