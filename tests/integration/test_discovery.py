"""Discovery from a watched file and from DNS (a real dnsmasq on 127.0.0.1), changed mid-run."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from gateway.discovery import resolve
from tests.helpers import base, free_port, running_gateway, start_pod, wait_until
from tests.tools import require_tool

pytestmark = pytest.mark.timeout(60)


async def drive(url: str, n: int) -> Counter[str]:
    served: Counter[str] = Counter()
    async with aiohttp.ClientSession() as client:
        for _ in range(n):
            async with client.get(f"{url}/v1/models") as resp:
                assert resp.status == 200
                served[(await resp.json())["backend"]] += 1
    return served


async def test_file_discovery_follows_the_file_and_keeps_the_last_good_set(tmp_path: Path) -> None:
    pods = [await start_pod(f"pod{i}") for i in range(3)]
    listing = tmp_path / "backends.yaml"
    listing.write_text(
        f"- {{url: '{pods[0].url}', name: a}}\n- {{url: '{pods[1].url}', name: b}}\n"
    )
    yaml_text = (
        "listen: {port: 0}\nadmin: {port: 0}\nlogging: {access_log: false}\n"
        f"discovery: {{type: file, path: '{listing}', refresh: 50ms}}\n"
        "balancer: {policy: round_robin}\nhealth_check: {enabled: false}\n"
    )
    try:
        async with running_gateway(yaml_text) as gw:
            fleet = gw.runtime.fleet
            assert sorted(fleet.endpoints) == ["a", "b"]
            assert set(await drive(base(gw), 10)) == {"pod0", "pod1"}
            a_before = fleet.endpoints["a"]
            listing.write_text(
                f"- {{url: '{pods[0].url}', name: a}}\n- {{url: '{pods[2].url}', name: c}}\n"
            )
            await wait_until(lambda: sorted(fleet.endpoints) == ["a", "c"])
            assert fleet.endpoints["a"] is a_before  # a backend that stays keeps its state
            assert set(await drive(base(gw), 10)) == {"pod0", "pod2"}
            listing.write_text("- {url: 'ftp://nope'}\n")  # invalid: the last good set serves on
            await gw.discovery.refresh_once()  # the same look the watcher takes, awaited
            assert sorted(fleet.endpoints) == ["a", "c"]
            assert set(await drive(base(gw), 6)) == {"pod0", "pod2"}
    finally:
        for pod in pods:
            await pod.runner.cleanup()


@contextlib.asynccontextmanager
async def dnsmasq(hosts_file: Path):  # type: ignore[no-untyped-def]
    binary = require_tool("dnsmasq")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--keep-in-foreground",
            f"--port={port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--no-negcache",
            "--local=/tailgate.test/",  # authoritative: "no AAAA" instead of REFUSED
            f"--addn-hosts={hosts_file}",
            "--pid-file=",
            "--user=root",
            "--log-facility=-",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc, f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def wait_for_records(name: str, resolver: str, expected: set[str]) -> None:
    for _ in range(500):
        with contextlib.suppress(Exception):
            if set(await resolve(name, resolver, timeout_s=0.5)) == expected:
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} never resolved to {expected}")


async def test_dns_discovery_adds_and_removes_backends_as_records_change(tmp_path: Path) -> None:
    name = "backends.tailgate.test"
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 {name}\n127.0.0.2 {name}\n")
    port = free_port()
    pods = {
        ip: await start_pod(f"pod-{ip}", host=ip, port=port)
        for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    }
    try:
        async with dnsmasq(hosts) as (proc, resolver):
            await wait_for_records(name, resolver, {"127.0.0.1", "127.0.0.2"})
            yaml_text = (
                "listen: {port: 0}\nadmin: {port: 0}\nlogging: {access_log: false}\n"
                f"discovery: {{type: dns, name: {name}, port: {port}, refresh: 100ms,"
                f" resolver: '{resolver}'}}\n"
                "balancer: {policy: round_robin}\nhealth_check: {enabled: false}\n"
            )
            async with running_gateway(yaml_text) as gw:
                fleet = gw.runtime.fleet
                assert sorted(fleet.endpoints) == [f"127.0.0.1:{port}", f"127.0.0.2:{port}"]
                assert set(await drive(base(gw), 10)) == {"pod-127.0.0.1", "pod-127.0.0.2"}

                hosts.write_text(f"127.0.0.1 {name}\n127.0.0.2 {name}\n127.0.0.3 {name}\n")
                proc.send_signal(signal.SIGHUP)  # dnsmasq re-reads its hosts file
                await wait_until(lambda: len(fleet.endpoints) == 3)
                assert set(await drive(base(gw), 12)) == set(f"pod-{ip}" for ip in pods)

                hosts.write_text(f"127.0.0.2 {name}\n127.0.0.3 {name}\n")
                proc.send_signal(signal.SIGHUP)
                await wait_until(lambda: f"127.0.0.1:{port}" not in fleet.endpoints)
                assert set(await drive(base(gw), 10)) == {"pod-127.0.0.2", "pod-127.0.0.3"}
    finally:
        for pod in pods.values():
            await pod.runner.cleanup()
