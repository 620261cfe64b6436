"""Hot reload and graceful drain of a real ``tailgate serve`` process, with a stream in flight."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import httpx
import pytest

from tests.helpers import GatewayProcess, free_ports, gateway_yaml, start_pod

pytestmark = pytest.mark.timeout(60)


def _config(pods, listen: int, admin: int, extra: str = "") -> str:  # type: ignore[no-untyped-def]
    text = gateway_yaml(
        pods, extra + "health_check: {enabled: false}\nheaders: {expose_backend: true}\n"
    )
    text = text.replace(
        "listen: {host: 127.0.0.1, port: 0}", f"listen: {{host: 127.0.0.1, port: {listen}}}"
    )
    return text.replace(
        "admin: {host: 127.0.0.1, port: 0}", f"admin: {{host: 127.0.0.1, port: {admin}}}"
    )


async def _admin_json(port: int, path: str) -> dict:  # type: ignore[type-arg]
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{port}{path}", timeout=5)).json()


async def _poll(predicate, timeout_s: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout_s / 0.05)):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def _reload_count(metrics_text: str, result: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(f'tailgate_config_reloads_total{{result="{result}"}}'):
            return float(line.split()[-1])
    return 0.0


async def test_reload_keeps_a_stream_alive_applies_valid_and_rejects_invalid_configs() -> None:
    pods = [await start_pod(f"pod{i}") for i in range(3)]
    listen, admin = free_ports(2)
    proc = GatewayProcess(_config(pods[:2], listen, admin, "balancer: {policy: least_request}\n"))
    try:
        await asyncio.to_thread(proc.wait_ready, admin)
        url = f"http://127.0.0.1:{listen}"
        async with aiohttp.ClientSession() as client:
            # A long stream in flight across all the reloads below.
            stream = await client.get(f"{url}/gated-stream")
            assert await stream.content.readuntil(b"\n\n") == b'data: {"n": 1}\n\n'
            for _ in range(4):  # traffic, so pod0 has latency samples to keep
                async with client.get(f"{url}/v1/models") as resp:
                    assert resp.status == 200
            before = await _admin_json(admin, "/admin/backends")
            samples_before = {
                b["name"]: b["signals"]["latency_samples"]
                for b in before["groups"]["default"]["backends"]
            }

            # 1) A valid change of the file's contents: pod2 joins, the policy changes.
            proc.config_path.write_text(
                _config(pods, listen, admin, "balancer: {policy: round_robin}\n")
            )

            async def three_backends() -> bool:
                snap = await _admin_json(admin, "/admin/backends")
                return len(snap["groups"]["default"]["backends"]) == 3

            await _poll(three_backends)
            after = await _admin_json(admin, "/admin/backends")
            group = after["groups"]["default"]
            assert group["policy"] == "round_robin"
            for backend in group["backends"]:
                if backend["name"] in samples_before:  # backends that stay keep their signals
                    assert backend["signals"]["latency_samples"] >= samples_before[backend["name"]]
            assert sum(b["signals"]["latency_samples"] for b in group["backends"]) >= 4

            # 2) An invalid file: logged and counted, the old config keeps serving.
            proc.config_path.write_text("backends: [{url: 'not a url'}]\n")

            async def failure_counted() -> bool:
                async with httpx.AsyncClient() as c:
                    text = (await c.get(f"http://127.0.0.1:{admin}/metrics")).text
                return _reload_count(text, "failure") >= 1

            await _poll(failure_counted)
            served = set()
            for _ in range(9):
                async with client.get(f"{url}/v1/models") as resp:
                    assert resp.status == 200
                    served.add(resp.headers["X-Tailgate-Backend"])
            assert served == {"pod0", "pod1", "pod2"}

            # 3) SIGHUP re-reads the (now valid again) file.
            proc.config_path.write_text(_config(pods[1:], listen, admin))
            proc.proc.send_signal(signal.SIGHUP)

            async def pod0_gone() -> bool:
                snap = await _admin_json(admin, "/admin/backends")
                return {b["name"] for b in snap["groups"]["default"]["backends"]} == {
                    "pod1",
                    "pod2",
                }

            await _poll(pod0_gone)
            # The stream started before all of this still completes.
            for pod in pods:  # whichever pod holds the stream
                pod.state.gate.set()
            rest = await stream.read()
            assert rest.endswith(b"data: [DONE]\n\n")
            stream.release()
    finally:
        output = proc.stop()
        for pod in pods:
            await pod.runner.cleanup()
    assert "config reload rejected" in output
    assert "backends[0].url" in output


async def test_sigterm_drains_the_stream_in_flight_then_exits_zero() -> None:
    pod = await start_pod("pod0")
    listen, admin = free_ports(2)
    proc = GatewayProcess(_config([pod], listen, admin, "drain_timeout: 20s\n"))
    try:
        await asyncio.to_thread(proc.wait_ready, admin)
        async with aiohttp.ClientSession() as client:
            stream = await client.get(f"http://127.0.0.1:{listen}/gated-stream")
            assert await stream.content.readuntil(b"\n\n") == b'data: {"n": 1}\n\n'
            proc.proc.send_signal(signal.SIGTERM)

            async def not_ready() -> bool:
                async with httpx.AsyncClient() as c:
                    return (await c.get(f"http://127.0.0.1:{admin}/readyz")).status_code == 503

            await _poll(not_ready)

            async def refusing() -> bool:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", listen)
                except OSError:
                    return True
                writer.close()
                return False

            await _poll(refusing)  # the listener no longer accepts
            assert proc.proc.poll() is None  # but the process waits for the stream
            pod.state.gate.set()
            assert (await stream.read()).endswith(b"data: [DONE]\n\n")
        code = await asyncio.to_thread(proc.proc.wait, 20)
        assert code == 0
    finally:
        proc.stop()
        await pod.runner.cleanup()
