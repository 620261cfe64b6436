"""A reload builds new health rules from the new sections; backends that stay keep their state."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.helpers import (
    admin,
    base,
    gateway_yaml,
    get_json,
    running_gateway,
    start_pod,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

RULES = (
    "outlier_detection: {{consecutive_5xx: {consecutive}, consecutive_gateway_failure: 50,"
    " base_ejection_time: 30s, max_ejection_percent: 100, panic_threshold: 0}}\n"
    "circuit_breaker: {{failure_threshold: 50}}\n"
    "balancer: {{policy: round_robin}}\nretries: {{attempts: 1}}\n"
)
CHECKS_OFF = "health_check: {enabled: false}\n"


async def backends_of(gw) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    snapshot = await get_json(f"{admin(gw)}/admin/backends")
    return {b["name"]: b for b in snapshot["groups"]["default"]["backends"]}


async def statuses(client: aiohttp.ClientSession, gw, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        async with client.get(f"{base(gw)}/v1/models") as resp:
            await resp.read()
            out.append(resp.status)
    return out


async def test_a_reload_of_the_outlier_settings_keeps_health_and_signals_of_backends_that_stay(
    tmp_path: Path,
) -> None:
    pods = [await start_pod(f"pod{i}") for i in range(3)]
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_yaml(pods, RULES.format(consecutive=5) + CHECKS_OFF))
    try:
        async with running_gateway(path.read_text(), path) as gw, aiohttp.ClientSession() as c:
            rt = gw.runtime
            pods[0].state.faults.error_rate = 1.0
            assert (await statuses(c, gw, 30)).count(500) == 5  # pod0 ejected after 5
            before = await backends_of(gw)
            assert before["pod0"]["health"]["state"] == "open"
            samples = {name: b["signals"]["latency_samples"] for name, b in before.items()}
            assert samples["pod1"] > 0 and samples["pod2"] > 0
            endpoints = dict(rt.fleet.endpoints)
            old_detector = rt.detector

            path.write_text(gateway_yaml(pods, RULES.format(consecutive=3) + CHECKS_OFF))
            assert await gw.reload()

            assert rt.detector is not old_detector  # new rules, built from the new section
            assert rt.fleet.endpoints == endpoints  # the same backends, not rebuilt
            after = await backends_of(gw)
            for key in ("state", "ejection_count", "last_reason"):
                assert after["pod0"]["health"][key] == before["pod0"]["health"][key], key
            assert after["pod0"]["health"]["open_remaining_s"] > 20  # still ejected
            for name in ("pod1", "pod2"):
                assert after[name]["signals"]["latency_samples"] == samples[name]

            # The new threshold applies at once to a backend that stayed: pod1 goes after 3.
            pods[1].state.faults.error_rate = 1.0
            assert (await statuses(c, gw, 20)).count(500) == 3
            pod1 = (await backends_of(gw))["pod1"]["health"]
            assert (pod1["state"], pod1["last_reason"]) == ("open", "consecutive_5xx")
    finally:
        for pod in pods:
            await pod.runner.cleanup()


async def test_a_reload_that_turns_active_checks_on_probes_backends_that_stay(
    tmp_path: Path,
) -> None:
    pods = [await start_pod(f"pod{i}") for i in range(2)]
    path = tmp_path / "gateway.yaml"
    rules = RULES.format(consecutive=5)
    path.write_text(gateway_yaml(pods, rules + CHECKS_OFF))
    try:
        async with running_gateway(path.read_text(), path) as gw, aiohttp.ClientSession() as c:
            assert (await statuses(c, gw, 4)) == [200] * 4
            endpoint = gw.runtime.fleet.endpoints["pod0"]
            assert endpoint.health.active is None
            pods[0].state.faults.ready = False
            checks = "health_check: {enabled: true, interval: 100ms, unhealthy_threshold: 1}\n"
            path.write_text(
                gateway_yaml(pods, rules.replace("health_check: {enabled: false}\n", checks))
            )
            assert await gw.reload()
            assert gw.runtime.fleet.endpoints["pod0"] is endpoint
            await wait_until(lambda: not endpoint.routable(gw.runtime.clock()), timeout_s=5)
            assert set(await statuses(c, gw, 6)) == {200}
            assert pods[1].state.served >= 6
            assert endpoint.signals.samples >= 2  # what it measured before the reload stays
    finally:
        for pod in pods:
            await pod.runner.cleanup()
