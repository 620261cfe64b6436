"""A pod killed mid-stream: does any client stream get lost?

    python -m loadtests.llm.kill --duration 20s --markdown kill.md

``streams`` users each keep one streamed chat in flight (closed loop: the next one leaves as
the last ends) against four emulated pods. At ``kill_at`` the pod holding the most sequences
(running + waiting: the worst one to lose, and the same choice for every router, whatever its
policy concentrated where) is sent SIGKILL by its PID, with every stream it holds in flight;
at ``restart_at`` it starts again on its port.

A stream is *lost* when the client does not get one whole answer: it broke off (no
``[DONE]``: a cut chunked encoding, a reset, a stall past the timeout), it ended in an error
event, or it ended cleanly with the wrong text. The emulator's pods answer a prompt with the
same words every time (:mod:`loadtests.llm.tokens`), so each answer is checked word for word
against what an unbroken stream gives: a seam that repeats or skips a token is lost too.
A request refused before its stream began (a non-200 head) is counted apart, as *failed*.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import signal
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from loadtests import procs
from loadtests.__main__ import _duration_s
from loadtests.llm.client import MODEL
from loadtests.llm.runner import LLM_BUDGET, LlmPairRun, tailgate_peer
from loadtests.llm.scenarios import LlmScenario
from loadtests.llm.tokens import answer_start, answer_token, chat_tokens
from loadtests.llm.workloads import WorkloadSpec, system_prompt
from loadtests.peers import SHIPPED_DEFAULTS, Peer
from loadtests.report import command_line, publish
from loadtests.runner import Settings, _run_async, tailgate_counter

KILL_PEERS: dict[str, Peer] = {
    p.label: p
    for p in (
        tailgate_peer("prefix_aware", SHIPPED_DEFAULTS, "tailgate shipped defaults"),
        tailgate_peer("weighted_score"),
        Peer("sglang cache_aware", "sglang", "cache_aware"),
        Peer("nginx least_conn", "nginx", "least_conn"),
    )
}


@dataclass(frozen=True)
class KillPlan:
    """What one row runs (seconds from the run's start; counts; emulator tokens)."""

    duration_s: float = 20.0  # users start new streams until then
    kill_at_s: float = 6.0
    restart_at_s: float | None = 12.0  # None: the pod stays dead
    streams: int = 32  # in flight at a time
    system_prompts: int = 8
    system_tokens: int = 300
    user_tokens: int = 20
    max_tokens: tuple[int, int] = (60, 200)  # drawn uniformly per stream


@dataclass
class Stream:
    """One streamed chat as the client saw it."""

    status: int = 0  # HTTP's; 0: no head came
    done: bool = False  # [DONE] arrived
    error_event: bool = False
    text: str = ""
    expected: str = ""

    @property
    def verdict(self) -> str:
        """ok, failed (refused before it began), or how it was lost."""
        if self.status != 200:
            return "failed"
        if self.error_event:
            return "error_event"
        if not self.done:
            return "broken"
        return "ok" if self.text == self.expected else "wrong_text"


@dataclass
class KillRow:
    peer: str
    on_killed_pod: int = -1  # sequences the killed pod held (running + waiting) at the kill
    after_restart: int = -1  # streams the restarted pod finished; -1: not restarted
    back_after_s: float | None = None  # the restarted pod answered its /health, after the kill
    verdicts: dict[str, int] = field(default_factory=dict)
    resumed: float | None = None  # tailgate: streams continued on another pod
    note: str = ""

    @property
    def streams(self) -> int:
        return sum(self.verdicts.values())

    @property
    def lost(self) -> int:
        return sum(n for v, n in self.verdicts.items() if v not in ("ok", "failed"))


def expected_text(messages: list[dict[str, str]], max_tokens: int) -> str:
    """What an unbroken stream from any emulated pod says to ``messages``."""
    seed, first = answer_start(chat_tokens(messages))
    return "".join(" " + answer_token(seed, first + i) for i in range(max_tokens))


async def stream_chat(
    http: aiohttp.ClientSession, url: str, messages: list[dict[str, str]], max_tokens: int
) -> Stream:
    out = Stream(expected=expected_text(messages, max_tokens))
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "stream": True}
    parts: list[str] = []
    try:
        async with asyncio.timeout(LLM_BUDGET.total_s), http.post(url, json=body) as resp:
            out.status = resp.status
            if resp.status != 200:
                await resp.read()
                return out
            async for raw in resp.content:
                if raw.startswith(b"data: [DONE]"):
                    out.done = True
                    break
                if not raw.startswith(b"data: "):
                    continue
                event = json.loads(raw[6:])
                if "error" in event:
                    out.error_event = True
                    continue
                choice = (event.get("choices") or [{}])[0]
                parts.append(choice.get("delta", {}).get("content") or "")
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        pass  # status 0 (no head) or not done: the verdict says which
    out.text = "".join(parts)
    return out


async def _user(
    http: aiohttp.ClientSession, url: str, plan: KillPlan, rng: random.Random, until: float
) -> list[Stream]:
    out = []
    while time.perf_counter() < until:
        system = system_prompt(rng.randrange(plan.system_prompts), plan.system_tokens)
        user = " ".join(f"u{rng.getrandbits(32):x}" for _ in range(plan.user_tokens))
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        out.append(await stream_chat(http, url, messages, rng.randint(*plan.max_tokens)))
    return out


def _pod_stats(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=2.0) as resp:
        return dict(json.loads(resp.read()))


class KillRun(LlmPairRun):
    """A pair whose busiest pod is killed by its PID, then (optionally) started again."""

    killed = -1  # the index of the killed pod
    killed_in_flight = -1
    killed_at = 0.0  # time.perf_counter()
    back_after_s: float | None = None

    def kill(self) -> None:
        held = []
        for backend in self.backends:
            stats = _pod_stats(backend.port)
            held.append(int(stats["running"] + stats["waiting"]))
        self.killed_in_flight = max(held)
        self.killed = held.index(self.killed_in_flight)
        pod = self._pod_process()
        self.killed_at = time.perf_counter()
        pod.proc.send_signal(signal.SIGKILL)
        pod.proc.wait(5.0)

    def restart(self) -> None:
        """The same command line again (the same port): a replacement pod, its cache cold."""
        args = [str(a) for a in self._pod_process().proc.args]  # type: ignore[union-attr]
        again = self._start(f"pod{self.killed}-restarted", args, None)
        again.wait_http(f"http://127.0.0.1:{self.backends[self.killed].port}/health")
        self.back_after_s = time.perf_counter() - self.killed_at

    def served_after_restart(self) -> int:
        if self.back_after_s is None:
            return -1
        return int(_pod_stats(self.backends[self.killed].port)["finished"])

    def _pod_process(self) -> procs.Child:
        return next(c for c in self.children if c.name == f"pod{self.killed}")


async def _drive(run: KillRun, url: str, plan: KillPlan, seed: int) -> list[Stream]:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        users = [
            asyncio.create_task(
                _user(http, url, plan, random.Random(seed * 1000 + n), start + plan.duration_s)
            )
            for n in range(plan.streams)
        ]
        await asyncio.sleep(plan.kill_at_s)
        await loop.run_in_executor(None, run.kill)
        if plan.restart_at_s is not None:
            await asyncio.sleep(max(0.0, start + plan.restart_at_s - time.perf_counter()))
            await loop.run_in_executor(None, run.restart)
        streams = [s for streams in await asyncio.gather(*users) for s in streams]
    return streams


def _broken_streams(admin_port: int) -> dict[str, float]:
    """tailgate's ``tailgate_broken_streams_total`` by result."""
    return tailgate_counter(admin_port, "tailgate_broken_streams_total", "result")


def run_row(peer: Peer, plan: KillPlan, settings: Settings) -> KillRow:
    scenario = LlmScenario("kill-pod", "one pod killed mid-stream", WorkloadSpec())
    run = KillRun(scenario, peer, settings)
    with run:
        try:
            run.start_upstream()
            url = run.start_peer()[0] + "/v1/chat/completions"
        except procs.StartError as exc:
            return KillRow(peer.label, note=f"not available: {str(exc).splitlines()[-1][:120]}")
        streams = _run_async(_drive(run, url, plan, settings.seed))
        row = KillRow(
            peer.label, run.killed_in_flight, run.served_after_restart(), run.back_after_s
        )
        if peer.kind == "tailgate":
            row.resumed = _broken_streams(run.admin_port).get("resumed", 0.0)
    for stream in streams:
        row.verdicts[stream.verdict] = row.verdicts.get(stream.verdict, 0) + 1
    return row


VERDICTS = ("broken", "error_event", "wrong_text", "failed")
HEAD = (
    "| router | streams | on the killed pod | lost | broken | error event | wrong text "
    "| failed before the stream | resumed (tailgate) | restarted pod: up after, served |"
)


def table(rows: Sequence[KillRow]) -> str:
    lines = [HEAD, "|---|" + "--:|" * 9]
    for r in rows:
        if r.note:
            lines.append(f"| {r.peer} | {r.note} |" + " - |" * 8)
            continue
        cells = [r.peer, str(r.streams), str(r.on_killed_pod), f"**{r.lost}**"]
        cells += [str(r.verdicts.get(v, 0)) for v in VERDICTS]
        cells.append("-" if r.resumed is None else f"{r.resumed:.0f}")
        if r.back_after_s is None:
            cells.append("-")
        else:
            cells.append(f"{r.back_after_s:.1f} s, {r.after_restart}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(rows: Sequence[KillRow], plan: KillPlan, cmd: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    restart = "stays dead" if plan.restart_at_s is None else f"restarts at {plan.restart_at_s:g} s"
    return (
        f"## A pod killed mid-stream ({when})\n\n    {cmd}\n\n"
        f"{plan.streams} streamed chats in flight at a time over four emulated pods for "
        f"{plan.duration_s:g} s; the busiest pod is sent SIGKILL at {plan.kill_at_s:g} s and "
        f"{restart}. "
        "Lost: the client got no whole answer (broken off, an error event, or text that "
        "differs from the unbroken stream's, checked word for word).\n\n" + table(rows) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.llm.kill", description=__doc__)
    p.add_argument("--duration", default="20s")
    p.add_argument("--kill-at", default="6s")
    p.add_argument("--restart-at", default="12s", help="'never': the pod stays dead")
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--peers", help="comma-separated subset of: " + ", ".join(KILL_PEERS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("loadtests/results/llm-kill"))
    p.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = p.parse_args(argv)
    labels = [s.strip() for s in args.peers.split(",")] if args.peers else list(KILL_PEERS)
    unknown = [label for label in labels if label not in KILL_PEERS]
    if unknown:
        p.error(f"unknown peers {unknown}; known: {list(KILL_PEERS)}")
    plan = KillPlan(
        duration_s=_duration_s(args.duration),
        kill_at_s=_duration_s(args.kill_at),
        restart_at_s=None if args.restart_at == "never" else _duration_s(args.restart_at),
        streams=args.streams,
    )
    settings = Settings(
        seed=args.seed,
        proxy_cpus="0",
        load_cpus="1",
        budget=LLM_BUDGET,
        client_timeout_s=LLM_BUDGET.total_s,
        log_dir=args.out / "logs",
    )
    rows = []
    for label in labels:
        rows.append(run_row(KILL_PEERS[label], plan, settings))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    cmd = command_line("loadtests.llm.kill", argv)
    text = render(rows, plan, cmd)
    publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
