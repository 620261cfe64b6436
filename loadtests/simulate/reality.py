"""The real loadtests' trouble scenarios (``loadtests.scenarios``), simulated.

Pods, rates, fault times and the tailgate peer's allowance (``loadtests/peers``: per-try 1 s,
one retry on 5xx/timeout, ejection after 5 failures for 10 s, probes every 1 s) are read from
or set as in the loadtests, so the simulated p99 ratios between policies can be set beside the
measured ones. Each scenario runs for the loadtests' 20 s at their rate, over several seeds.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from gateway.config import parse_config
from gateway.config.model import GatewayConfig
from loadtests.simulate.compare import compare
from loadtests.simulate.engine import PolicyChoice
from loadtests.simulate.scenarios import PodSpec, Scenario

DURATION_S = 20.0  # loadtests.runner's default run length
TROUBLE = ("slow-pod", "errors", "hang", "gc-pauses")
POLICIES = (
    PolicyChoice("weighted_score", "p2c"),
    PolicyChoice("least_request"),  # ~ envoy least_request, nginx "random two least_conn"
    PolicyChoice("round_robin"),  # ~ envoy round_robin
    PolicyChoice("peak_ewma"),
    PolicyChoice("random"),
)
PEER_CONFIG = """
backends: [{url: "http://placeholder.sim:8000"}]  # replaced by the simulated pods
balancer: {policy: weighted_score, selection: p2c}
timeouts: {connect: 1s, per_try: 1s, total: 3s}
limits: {max_requests_per_backend: 1024, max_pending: 4096}
outlier_detection: {consecutive_5xx: 5, consecutive_gateway_failure: 5, interval: 1s,
                    base_ejection_time: 10s, max_ejection_percent: 50}
health_check: {path: /ready, interval: 1s, timeout: 1s, unhealthy_threshold: 2,
               healthy_threshold: 2}
retries: {attempts: 2, retry_on: [connect-failure, reset, timeout, 500, 502, 503, 504],
          budget_percent: 20, retry_non_idempotent: true}
"""


def peer_config() -> GatewayConfig:
    """The gateway settings ``loadtests/peers/tailgate.yaml.tmpl`` renders with its budget."""
    return parse_config(PEER_CONFIG)


def simulated(name: str) -> tuple[Scenario, int]:
    """The loadtest scenario `name` as a simulator scenario, and its number of requests."""
    from loadtests.scenarios import SCENARIOS as LOADTEST_SCENARIOS  # the real loadtests

    real = LOADTEST_SCENARIOS[name]
    pods = []
    for i, pod in enumerate(real.pods):
        fault: dict[str, object] = dict(pod.faults)
        fault_from_s = 0.0
        for change in real.faults:
            if change.pod == i:
                fault.update(change.change)
                fault_from_s = change.at_fraction * DURATION_S
        pods.append(
            PodSpec(
                slots=pod.slots,
                service_s=pod.service_ms / 1000,
                slow_factor=pod.slow_factor * float(fault.pop("slow_factor", 1.0)),  # type: ignore[arg-type]
                fault_from_s=fault_from_s,
                **fault,  # type: ignore[arg-type]
            )
        )
    capacity = sum(p.capacity_rps for p in pods)
    scenario = Scenario(name, tuple(pods), sigma=real.pods[0].sigma, load=real.rate_rps / capacity)
    return scenario, round(real.rate_rps * DURATION_S)


def p99_ratios(
    seeds: Sequence[int] = (1, 2, 3, 4, 5), policies: Sequence[PolicyChoice] = POLICIES
) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per scenario and policy: (median p99 ms over seeds, median p99 / weighted_score p99,
    median success share)."""
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    gateway = peer_config()
    for name in TROUBLE:
        scenario, requests = simulated(name)
        runs = [compare(scenario, 1, requests, seed, gateway, policies) for seed in seeds]
        out[name] = {}
        for k, choice in enumerate(policies, start=1):
            p99 = [run[k].p99_ms for run in runs]
            ratio = [run[k].p99_ms / run[1].p99_ms for run in runs]
            ok = [run[k].success for run in runs]
            out[name][choice.label] = (
                statistics.median(p99),
                statistics.median(ratio),
                statistics.median(ok),
            )
    return out


def markdown(ratios: dict[str, dict[str, tuple[float, float, float]]]) -> str:
    labels = list(next(iter(ratios.values())))
    lines = [
        "| loadtest scenario | " + " | ".join(labels) + " |",
        "|---|" + "--:|" * len(labels),
    ]
    for name, row in ratios.items():
        cells = " | ".join(
            f"{row[lb][0]:.0f} ms ({row[lb][1]:.2f}x, {row[lb][2] * 100:.1f}% ok)" for lb in labels
        )
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)
