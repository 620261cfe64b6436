"""The README's quick start, replayed: `make run`'s command and the curl requests against it.

`make -n run PORT=... BACKENDS=...` prints the command the README's `make run` runs; the test
runs that command (the real `tailgate up`, with torch backends) on free ports, then every
curl line of the quick start with its ports moved, through the real curl.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, wait_until

pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = 2  # fewer than the default three: the replay checks the commands, not the balancing
README_PORTS = {"localhost:8080": "port", "localhost:9901": "admin_port"}


def quick_start() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Quick start")
    return readme[start : readme.index("\n## ", start + 1)]


def sh_commands(section: str) -> list[str]:
    """Every command of the section's ```sh blocks, continuation lines joined, comments cut."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive ports that are free on 127.0.0.1 now."""
    for _ in range(50):
        first = free_port()
        if first + count > 65535:
            continue
        socks = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError(f"no {count} consecutive free ports")


def make_run_command(ports: dict[str, int]) -> list[str]:
    """What `make run` would run with these choices, as `python -m gateway.cli` here."""
    assert shutil.which("make"), "make is needed to read the Makefile's run recipe"
    choices = [
        f"PORT={ports['port']}",
        f"ADMIN_PORT={ports['admin_port']}",
        f"BACKENDS={BACKENDS}",
        f"BACKEND_PORT={ports['backend_port']}",
    ]
    dry = subprocess.run(
        ["make", "-s", "-n", "run", *choices],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    up = [line for line in dry.splitlines() if "tailgate up" in line]
    assert len(up) == 1, dry
    words = shlex.split(up[0])
    assert words[0].endswith("/tailgate") and words[1] == "up", up[0]
    return [sys.executable, "-m", "gateway.cli", *words[1:]]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, int]]:
    ports = {
        "port": free_port(),
        "admin_port": free_port(),
        "backend_port": free_port_run(BACKENDS),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "up.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            make_run_command(ports), cwd=ROOT, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=out,
        )  # fmt: skip
    try:
        yield ports
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log.read_text()


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(300)
async def test_quick_start_commands_work_as_written(stack: dict[str, int]) -> None:
    commands = sh_commands(quick_start())
    assert "make run" in commands and "make test" in commands
    curls = [c for c in commands if c.startswith("curl ")]
    assert len(curls) >= 3, commands

    admin = f"http://127.0.0.1:{stack['admin_port']}"
    await wait_until(lambda: answers(f"{admin}/readyz"), timeout_s=240, step_s=0.5)
    for command in curls:
        for readme_port, choice in README_PORTS.items():
            command = command.replace(readme_port, f"127.0.0.1:{stack[choice]}")
        assert "localhost" not in command, (
            f"a README curl on a port the test does not map: {command}"
        )
        done = subprocess.run(
            [*shlex.split(command), "--fail", "--max-time", "30"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, f"{command}: exit {done.returncode} {done.stderr}"
        assert done.stdout.strip(), f"{command}: no answer"
        if "/v1/completions" in command:
            assert '"choices"' in done.stdout
        if "/admin/backends" in command:
            group = json.loads(done.stdout)["groups"]["default"]
            assert len(group["backends"]) == group["routable"] == BACKENDS
        if "/metrics" in command:
            assert "tailgate_requests_total" in done.stdout
