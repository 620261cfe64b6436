"""Child processes of a benchmark: started pinned to a core, waited on, stopped by PID.

Every process this package starts is tracked by its PID and stopped by that PID, never by
name, so a benchmark cannot touch anything it did not start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: all held open at once, so the kernel cannot hand the
    same one out twice (asking one at a time, a port just closed can come back)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def pinned(cmd: Sequence[str], cpus: str | None) -> list[str]:
    """``cmd`` run under ``taskset -c cpus`` (taskset execs, so the PID stays the command's)."""
    if cpus is None or shutil.which("taskset") is None:
        return list(cmd)
    return ["taskset", "-c", cpus, *cmd]


class StartError(RuntimeError):
    """A child exited or never became ready; the message carries the tail of its log."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_http(self, url: str, timeout_s: float = 15.0) -> None:
        """Poll ``url`` until it answers 2xx; fail early if the process dies."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1.0) as resp:
                    if 200 <= resp.status < 300:
                        return
                    last = f"status {resp.status}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.05)
        raise StartError(f"{self.name} not ready at {url} after {timeout_s}s ({last})")

    def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; always reaps the PID."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)


def start(name: str, cmd: Sequence[str], cpus: str | None, log_dir: Path) -> Child:
    """Start ``cmd`` pinned to ``cpus`` with stdout and stderr to ``log_dir/name.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            pinned(cmd, cpus),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return Child(name, proc, log_path)


def stop_all(children: Sequence[Child]) -> None:
    for child in reversed(children):
        child.stop()
