"""A tensor-parallel ``tailgate-backend`` behind the gateway: serve, drain, lose a rank.

    python -m loadtests.tp_serving                       # CPU, tiny preset, TP=2 over gloo
    python -m loadtests.tp_serving --device cuda --preset 1b --dist-backend gloo   # one GPU
    python -m loadtests.tp_serving --device cuda --preset 1b --dist-backend nccl   # two GPUs

Starts a TP=N backend (A) and a TP=1 backend (B) of the same preset, and ``tailgate serve``
with file discovery, then runs four phases with the official ``openai`` client, every request
a streamed chat completion:

1. **serve**: A alone behind the gateway; ``--requests`` chats, ``--concurrency`` at a time,
   must all finish (a finish reason and at least one content chunk).
2. **drain**: ``--concurrency`` longer chats are in flight on A (each has its first chunk) when
   A gets SIGTERM: every one must finish, and A must exit 0.
3. A is started again and B is added to the discovery file.
4. **killed rank**: rank 1 of A gets SIGKILL (its PID read from A's log). A must exit non-zero
   with a log line naming the dead rank; chats sent through the gateway from then on must all
   finish (on B), and the gateway must mark A unroutable.

Over gloo the ranks of A may share one GPU (NCCL refuses): this checks serving and
supervision, not TP speed. On two GPUs the same run with ``--dist-backend nccl`` gives A one
GPU per rank. Every process is started here and stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openai

from loadtests import procs

RANK_LINE = re.compile(r"started tensor-parallel rank 1 \(pid (\d+)\)")
DEATH_LINE = re.compile(r"tensor-parallel rank 1 \(pid \d+\) exited with code (-?\d+)")
POLL_S = 0.1


@dataclass
class PhaseResult:
    name: str
    sent: int = 0
    finished: int = 0
    errors: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    passed: bool = False


@dataclass
class Chat:
    """What one streamed chat received."""

    chunks: int = 0
    first_chunk: asyncio.Event = field(default_factory=asyncio.Event)
    finish_reason: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.error is None and self.finish_reason is not None and self.chunks > 0


async def stream_chat(
    client: openai.AsyncOpenAI, model: str, i: int, max_tokens: int, chat: Chat | None = None
) -> Chat:
    """Stream one chat into ``chat`` (a new one if none is given, else the caller's, so it can
    watch the stream's progress)."""
    chat = chat if chat is not None else Chat()
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"Request {i}: tell me about load balancing."}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
        )
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    chat.chunks += 1
                    chat.first_chunk.set()
                if choice.finish_reason:
                    chat.finish_reason = choice.finish_reason
    except openai.OpenAIError as exc:
        chat.error = f"{type(exc).__name__}: {exc}"
    chat.first_chunk.set()  # also on failure, so nobody waits on it forever
    return chat


async def chats(
    client: openai.AsyncOpenAI, model: str, count: int, concurrency: int, max_tokens: int
) -> list[Chat]:
    """``count`` streamed chats, at most ``concurrency`` in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Chat:
        async with gate:
            return await stream_chat(client, model, i, max_tokens)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def tally(phase: PhaseResult, results: list[Chat]) -> None:
    phase.sent += len(results)
    phase.finished += sum(c.finished for c in results)
    phase.errors += [
        c.error or f"finish_reason={c.finish_reason}" for c in results if not c.finished
    ]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2.0) as resp:
        return json.loads(resp.read())


def routable(admin_url: str) -> dict[str, bool]:
    """Backend name -> routable, as the gateway's admin API reports it."""
    snapshot = get_json(f"{admin_url}/admin/backends")
    return {
        b["name"]: bool(b["routable"])
        for group in snapshot["groups"].values()
        for b in group["backends"]
    }


async def wait_until(what: str, check: Any, timeout_s: float) -> float:
    """Poll ``check()`` until true; the seconds it took. Raises on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if check():
                return time.monotonic() - start
        except OSError:
            pass
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f}s")


class Fleet:
    """The two backends, the gateway and the discovery file that tells it about them."""

    def __init__(self, a: argparse.Namespace, work: Path) -> None:
        self.args = a
        self.work = work
        self.ports = dict(zip(("tp", "one", "listen", "admin"), procs.free_ports(4), strict=True))
        self.discovery = work / "backends.yaml"
        self.children: dict[str, procs.Child] = {}
        self.starts = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def backend_cmd(self, name: str, tp: int) -> list[str]:
        a = self.args
        cmd = [sys.executable, "-m", "backend.cli", "--preset", a.preset, "--device", a.device]
        cmd += ["--tp", str(tp), "--port", str(self.ports[name]), "--max-model-len", "512"]
        if tp > 1 and a.dist_backend:
            cmd += ["--dist-backend", a.dist_backend]
        return cmd

    def start_backend(self, name: str, tp: int) -> procs.Child:
        self.starts += 1
        child = procs.start(f"{name}-{self.starts}", self.backend_cmd(name, tp), None, self.work)
        self.children[name] = child
        return child

    def wait_backend(self, name: str) -> None:
        self.children[name].wait_http(f"{self.url(name)}/ready", self.args.load_timeout)

    def publish(self, *names: str) -> None:
        """Write the discovery file: these backends, by name."""
        lines = [f"- {{url: '{self.url(n)}', name: {n}}}" for n in names]
        tmp = self.discovery.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.discovery)  # the gateway never reads half a file

    def start_gateway(self) -> None:
        config = self.work / "gateway.yaml"
        config.write_text(
            f"listen: {{host: 127.0.0.1, port: {self.ports['listen']}}}\n"
            f"admin: {{host: 127.0.0.1, port: {self.ports['admin']}}}\n"
            f"discovery: {{type: file, path: '{self.discovery}', refresh: 200ms}}\n"
            "health_check: {path: /ready, interval: 500ms, timeout: 1s, "
            "unhealthy_threshold: 2, healthy_threshold: 1}\n"
            "timeouts: {connect: 1s, per_try: 300s, total: 600s}\n"
            "hedging: {enabled: false}\n"
        )
        cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
        child = procs.start("gateway", cmd, None, self.work)
        self.children["gateway"] = child
        child.wait_http(f"{self.admin_url}/healthz", 30)

    @property
    def admin_url(self) -> str:
        return self.url("admin")

    def stop_all(self) -> None:
        procs.stop_all(list(self.children.values()))


def model_name(preset: str) -> str:
    return f"tailgate-{preset}"


async def serve_phase(fleet: Fleet, client: openai.AsyncOpenAI) -> PhaseResult:
    a, phase = fleet.args, PhaseResult("serve")
    start = time.monotonic()
    tally(phase, await chats(client, model_name(a.preset), a.requests, a.concurrency, a.max_tokens))
    phase.notes["wall_s"] = round(time.monotonic() - start, 2)
    phase.passed = phase.finished == phase.sent == a.requests
    return phase


async def drain_phase(fleet: Fleet, client: openai.AsyncOpenAI) -> PhaseResult:
    a, phase = fleet.args, PhaseResult("drain")
    model = model_name(a.preset)
    watched = [Chat() for _ in range(a.concurrency)]
    tasks = [
        asyncio.create_task(stream_chat(client, model, 1000 + i, a.drain_tokens, chat))
        for i, chat in enumerate(watched)
    ]
    # SIGTERM only once every chat is streaming: each is then in flight on the backend.
    await asyncio.wait_for(asyncio.gather(*(c.first_chunk.wait() for c in watched)), 120)
    child = fleet.children["tp"]
    child.proc.send_signal(signal.SIGTERM)
    results = await asyncio.gather(*tasks)
    tally(phase, list(results))
    code = await asyncio.to_thread(child.proc.wait, 60)
    phase.notes |= {"exit_code": code, "chunks_per_chat": [c.chunks for c in results]}
    phase.passed = phase.finished == phase.sent and code == 0
    return phase


async def killed_rank_phase(fleet: Fleet, client: openai.AsyncOpenAI) -> PhaseResult:
    a, phase = fleet.args, PhaseResult("killed rank")
    child = fleet.children["tp"]
    match = RANK_LINE.search(child.log_path.read_text(errors="replace"))
    if match is None:
        phase.errors.append("no rank 1 PID in the TP backend's log")
        return phase
    rank_pid = int(match.group(1))
    killed_at = time.monotonic()
    os.kill(rank_pid, signal.SIGKILL)  # a child of the backend this run started
    code = await asyncio.to_thread(child.proc.wait, 60)
    down_s = time.monotonic() - killed_at
    log_text = child.log_path.read_text(errors="replace")
    death = DEATH_LINE.search(log_text)
    tally(
        phase,
        await chats(client, model_name(a.preset), a.failover_requests, a.concurrency, a.max_tokens),
    )
    ejected_s = await wait_until(
        "the gateway ejects the dead backend",
        lambda: not routable(fleet.admin_url).get("tp", True),
        30,
    )
    phase.notes |= {
        "rank_pid": rank_pid,
        "server_exit_code": code,
        "server_down_s": round(down_s, 2),
        "log_line": death.group(0) if death else None,
        "ejected_after_requests_s": round(ejected_s, 2),
        "routable": routable(fleet.admin_url),
    }
    phase.passed = (
        code != 0
        and death is not None
        and phase.finished == phase.sent == a.failover_requests
        and routable(fleet.admin_url).get("one", False)
    )
    return phase


async def run(a: argparse.Namespace, work: Path) -> list[PhaseResult]:
    fleet = Fleet(a, work)
    client = openai.AsyncOpenAI(
        base_url=f"{fleet.url('listen')}/v1", api_key="unused", max_retries=0, timeout=300
    )
    try:
        fleet.publish("tp")
        fleet.start_backend("tp", a.tp)
        fleet.start_backend("one", 1)  # loads while A serves; joins the gateway in phase 3
        await asyncio.to_thread(fleet.wait_backend, "tp")
        fleet.start_gateway()
        await wait_until("the gateway routes to A", lambda: routable(fleet.admin_url).get("tp"), 30)
        phases = [await serve_phase(fleet, client), await drain_phase(fleet, client)]
        fleet.start_backend("tp", a.tp)
        await asyncio.to_thread(fleet.wait_backend, "tp")
        await asyncio.to_thread(fleet.wait_backend, "one")
        fleet.publish("tp", "one")
        await wait_until(
            "the gateway routes to A and B",
            lambda: all(routable(fleet.admin_url).get(n) for n in ("tp", "one")),
            30,
        )
        phases.append(await killed_rank_phase(fleet, client))
        return phases
    finally:
        await client.close()
        fleet.stop_all()


def report(a: argparse.Namespace, phases: list[PhaseResult]) -> str:
    lines = [
        f"tp_serving: {a.preset} TP={a.tp} ({a.dist_backend or 'default'} on {a.device}) "
        "behind tailgate, streamed chats via the openai client",
        "| phase | sent | finished | passed | notes |",
        "|---|--:|--:|---|---|",
    ]
    for p in phases:
        notes = json.dumps(p.notes)
        lines.append(f"| {p.name} | {p.sent} | {p.finished} | {p.passed} | {notes} |")
        lines += [f"  error: {e}" for e in p.errors[:5]]
    lines.append("PASSED" if phases and all(p.passed for p in phases) else "FAILED")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.tp_serving", description=__doc__)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--dist-backend",
        choices=["nccl", "gloo"],
        help="A's process group (default: the backend's: nccl on cuda, gloo on cpu)",
    )
    p.add_argument("--requests", type=int, default=50, help="chats of the serve phase")
    p.add_argument("--failover-requests", type=int, default=20, help="chats after the kill")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--drain-tokens", type=int, default=48, help="tokens of each drained chat")
    p.add_argument("--load-timeout", type=float, default=300, help="seconds for a backend to load")
    p.add_argument("--work-dir", type=Path, help="logs and configs (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="also write the phases here")
    a = p.parse_args(argv)
    if a.tp < 2:
        p.error("--tp must be at least 2: the run kills rank 1")
    with tempfile.TemporaryDirectory(prefix="tp-serving-") as tmp:
        work = a.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        phases = asyncio.run(run(a, work))
    print(report(a, phases), flush=True)
    if a.json:
        a.json.write_text(json.dumps([asdict(p) for p in phases], indent=2))
    return 0 if all(p.passed for p in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
