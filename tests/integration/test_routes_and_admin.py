"""Routes with canary splits, the admin listener's endpoints and token, and the access log."""

from __future__ import annotations

import json
import logging
from collections import Counter

import aiohttp
import pytest

from tests.helpers import admin, base, running_gateway, start_pod

pytestmark = pytest.mark.timeout(60)


def _routes_config(pods) -> str:  # type: ignore[no-untyped-def]
    return f"""
listen: {{port: 0}}
admin: {{port: 0}}
logging: {{access_log: false}}
health_check: {{enabled: false}}
headers: {{expose_backend: true}}
backends:
  - {{url: '{pods[0].url}', name: stable-a, group: stable}}
  - {{url: '{pods[1].url}', name: stable-b, group: stable}}
  - {{url: '{pods[2].url}', name: canary-a, group: canary}}
routes:
  - name: canary-header
    match: {{headers: {{X-Canary: "1"}}}}
    groups: [{{name: canary}}]
  - name: my-model
    match: {{path_prefix: /v1/, model: my-model}}
    groups: [{{name: stable, weight: 90}}, {{name: canary, weight: 10}}]
  - name: everything-else
    groups: [{{name: stable}}]
"""


async def test_model_route_splits_90_10_and_header_route_pins() -> None:
    pods = [await start_pod(f"p{i}") for i in range(3)]
    try:
        async with running_gateway(_routes_config(pods)) as gw, aiohttp.ClientSession() as client:
            served: Counter[str] = Counter()
            n = 1000
            for _ in range(n):
                async with client.post(
                    f"{base(gw)}/v1/chat/completions", json={"model": "my-model", "messages": []}
                ) as resp:
                    assert resp.status == 200
                    served[resp.headers["X-Tailgate-Backend"].split("-")[0]] += 1
            canary_share = served["canary"] / n
            print(f"\ncanary share over {n} requests: {canary_share:.3f}")
            assert 0.06 <= canary_share <= 0.14  # 10% +- 4 standard deviations

            for _ in range(20):  # another model matches no split: stable only
                async with client.post(
                    f"{base(gw)}/v1/chat/completions", json={"model": "other"}
                ) as resp:
                    assert resp.headers["X-Tailgate-Backend"].startswith("stable")
            for _ in range(20):
                async with client.get(f"{base(gw)}/v1/models", headers={"X-Canary": "1"}) as resp:
                    assert resp.headers["X-Tailgate-Backend"] == "canary-a"
            metrics = gw.runtime.metrics.requests
            assert metrics.labels("my-model", "canary-a", "200")._value.get() == served["canary"]
    finally:
        for pod in pods:
            await pod.runner.cleanup()


async def test_admin_endpoints_token_and_separation() -> None:
    pod = await start_pod("p0")
    text = f"""
listen: {{port: 0}}
admin: {{port: 0, token: s3cret}}
backends: [{{url: '{pod.url}', name: only}}]
health_check: {{enabled: false}}
"""
    try:
        async with running_gateway(text) as gw, aiohttp.ClientSession() as client:
            async with client.get(f"{admin(gw)}/healthz") as resp:
                assert resp.status == 200  # liveness needs no token
            async with client.get(f"{admin(gw)}/admin/backends") as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["type"] == "unauthorized"
            auth = {"Authorization": "Bearer s3cret"}
            async with client.get(f"{admin(gw)}/readyz", headers=auth) as resp:
                assert resp.status == 200
            async with client.get(f"{admin(gw)}/admin/backends", headers=auth) as resp:
                assert (await resp.json())["groups"]["default"]["backends"][0]["name"] == "only"
            async with client.get(f"{admin(gw)}/metrics", headers=auth) as resp:
                assert resp.status == 200
                assert "# TYPE tailgate_requests_total counter" in await resp.text()
            # The public listener never serves admin paths: they are forwarded like any other.
            async with client.get(f"{base(gw)}/admin/backends") as resp:
                assert resp.headers.get("X-Pod") == "p0"
    finally:
        await pod.runner.cleanup()


async def test_access_log_is_one_json_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    pod = await start_pod("p0")
    text = (
        f"listen: {{port: 0}}\nadmin: {{port: 0}}\nbackends: [{{url: '{pod.url}', name: only}}]\n"
    )
    try:
        async with running_gateway(text) as gw, aiohttp.ClientSession() as client:
            with caplog.at_level(logging.INFO, logger="tailgate.access"):
                async with client.post(
                    f"{base(gw)}/v1/completions", json={}, headers={"X-Request-ID": "req-42"}
                ) as resp:
                    await resp.read()
        lines = [r.getMessage() for r in caplog.records if r.name == "tailgate.access"]
        assert len(lines) == 1
        entry = json.loads(lines[0])
        assert (
            entry["id"] == "req-42" and entry["route"] == "default" and entry["backend"] == "only"
        )
        assert entry["status"] == 200 and entry["tries"] == 1 and entry["latency_ms"] > 0
    finally:
        await pod.runner.cleanup()
