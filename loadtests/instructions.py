"""Instructions per request of a tailgate peer, counted by callgrind: the request path's work
in a number that other load on the machine does not move.

    python -m loadtests.instructions --peer 'tailgate shipped defaults' --requests 1000

On the shared 2-core development machine the closed-loop rows of the same code move 2x
between runs (Envoy's from 2,400 to 4,900 requests/s within minutes); this count moves
about 1%. It runs tailgate from this checkout under ``valgrind --tool=callgrind
--instr-atstart=no`` in front of the overhead rows' static nginx, sends a warm-up, turns
instrumentation on, zeroes the counters, sends ``--requests`` POSTs (the closed loop's body)
over ``--concurrency`` connections, dumps, and divides the dump's instruction total.

What it counts: every thread of the tailgate process (the access-log writer too), in user
space. What it does not: system calls, the kernel's network stack, and time spent waiting
for the interpreter lock or the CPU, so it complements the wall-clock rows, it does not
replace them. Compare two versions by running it in each checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from loadtests import peers as peers_mod
from loadtests import procs
from loadtests.wrk import POST_BODY

# Under valgrind the interpreter starts and imports 30-50x slower than natively.
_READY_TIMEOUT_S = 600.0
_WARMUP_REQUESTS = 200


@dataclass(frozen=True)
class Count:
    requests: int
    instructions: int
    failed: int

    @property
    def per_request(self) -> float:
        return self.instructions / max(self.requests, 1)


async def send(url: str, requests: int, concurrency: int) -> int:
    """POST ``requests`` closed-loop bodies to ``url``; returns how many were not a 200."""
    left, failed = requests, 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one_connection() -> None:
            nonlocal left, failed
            while left > 0:
                left -= 1
                headers = {"Content-Type": "application/json"}
                async with session.post(url, data=POST_BODY, headers=headers) as response:
                    await response.read()
                    failed += response.status != 200

        await asyncio.gather(*(one_connection() for _ in range(concurrency)))
    return failed


def _callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=60)


def _summary(out_file: Path) -> int:
    """The instruction total of one callgrind dump (its ``summary:`` line)."""
    for line in out_file.read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise ValueError(f"no summary line in {out_file}")


def count(peer: peers_mod.Peer, requests: int, concurrency: int, run_dir: Path) -> Count:
    children: list[procs.Child] = []
    try:
        upstream_port, listen, admin = procs.free_ports(3)
        upstream_conf = run_dir / "upstream.conf"
        values = {"listen_port": upstream_port, "run_dir": str(run_dir)}
        upstream_conf.write_text(peers_mod.render_template("upstream-nginx.conf.tmpl", values))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        upstream_cmd = [nginx, "-p", str(run_dir), "-e", str(run_dir / "u.log"),
                        "-c", str(upstream_conf)]  # fmt: skip
        upstream = procs.start("upstream", upstream_cmd, None, run_dir)
        children.append(upstream)
        upstream.wait_http(f"http://127.0.0.1:{upstream_port}/health")
        backends = [peers_mod.Backend("upstream", upstream_port)]
        config = run_dir / "peer.yaml"
        budget = peers_mod.Budget()
        config.write_text(peers_mod.render(peer, backends, listen, admin, run_dir, budget))
        cmd = peers_mod.command(peer, config, run_dir)
        assert cmd is not None  # a tailgate peer always has one
        out_file = run_dir / "callgrind.out"
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out_file}"]  # fmt: skip
        child = procs.start("tailgate", [*valgrind, *cmd], None, run_dir)
        children.append(child)
        child.wait_http(f"http://127.0.0.1:{listen}/health", _READY_TIMEOUT_S)
        url = f"http://127.0.0.1:{listen}/v1/completions"
        asyncio.run(send(url, _WARMUP_REQUESTS, concurrency))
        pid = str(child.pid)
        _callgrind_control("--instr=on", pid)
        _callgrind_control("--zero", pid)
        failed = asyncio.run(send(url, requests, concurrency))
        _callgrind_control("--dump", pid)
        dumps = sorted(run_dir.glob("callgrind.out.*"))
        if not dumps:
            raise procs.StartError(f"callgrind wrote no dump:\n{child.log_tail()}")
        return Count(requests, _summary(dumps[-1]), failed)
    finally:
        procs.stop_all(children)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m loadtests.instructions", description=__doc__)
    p.add_argument("--peer", default="tailgate shipped defaults", help="a tailgate peer's label")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args(argv)
    peer = peers_mod.PEERS.get(args.peer)
    if peer is None or peer.kind != "tailgate":
        known = [label for label, q in peers_mod.PEERS.items() if q.kind == "tailgate"]
        raise SystemExit(f"--peer must be one of {known}")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind (with callgrind_control) is not installed")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tailgate-instructions-") as tmp:
        result = count(peer, args.requests, args.concurrency, Path(tmp))
    print(
        f"{args.peer}: {result.per_request / 1e6:.3f} M instructions per request "
        f"({result.requests} requests, {result.failed} not 200, "
        f"{time.monotonic() - started:.0f} s)"
    )
    if result.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
