"""The LLM fleet on virtual time: G gateway replicas route chat sessions to M LLM pods.

    python -m loadtests.simulate.llm_fleet --replicas 32 --backends 1000 --duration 5

Pods are :class:`~loadtests.simulate.llm_pods.SimLlmPod` (the emulator's engine: token-level
steps, prefix-cached KV blocks, KV capacity). Each request goes to a random replica, as behind
a layer-4 balancer; a replica knows only what it sent. Routers compared:

- ``random``.
- ``least_request``: power of two choices on the replica's own in-flight counts (what
  tailgate's ``least_request`` sees of a fleet it shares with G - 1 other replicas).
- ``cache_aware``: SGLang's router's rule on the replica's own history: the shortest queue
  when loads are out of balance (``max - min > 64`` and ``max > 1.5 x min``, its defaults),
  else the pod that was sent the longest matching prefix when it covers more than 30% of
  the prompt, else the pod with the least cached history. Matching is by KV block (16
  tokens), not by character as SGLang's radix tree does.
- ``oracle``: a global greedy view no gateway has: every pod's true cache and prefill queue;
  it picks the least estimated time to first token. Greedy, so a bound to aim at rather than
  the optimum.

- ``tailgate POLICY``: tailgate's own registered policies, one per replica with its own
  signals and prefix index, each request parsed and recorded as the gateway does
  (``loadtests.simulate.llm_tailgate``).

``kept`` is the share of follow-up turns served by the pod that served the session's previous
turn: affinity, seen directly. ``busiest pod`` is the most requests one pod served over the
mean per pod: how far affinity piles work onto one pod (the load bound caps it).

Every chat body carries OpenAI's ``user`` field, as a client SDK sends it: one key per session,
or one per ``sessions_per_user`` consecutive sessions (a user who opens several conversations
at once), whose conversations session affinity places by key among the first successors of
each one's system prompt home. Only ``tailgate prefix_aware session_affinity`` reads it.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import time
from dataclasses import dataclass, field, replace

from loadtests.llm.blocks import chain_keys
from loadtests.llm.costs import EngineCosts
from loadtests.llm.engine import Sequence
from loadtests.llm.tokens import chat_tokens
from loadtests.llm.workloads import Session, WorkloadSpec, plan
from loadtests.simulate.llm_pods import SimLlmPod
from loadtests.simulate.llm_tailgate import REFRESH_S, TAILGATE_ROUTERS, SimTry, TailgateReplica
from loadtests.stats import percentile

ROUTERS = ("random", "least_request", "cache_aware", "oracle", *TAILGATE_ROUTERS)
SCRAPE_S = 1.0  # the default balancer.queue_depth.scrape_interval
BALANCE_ABS = 64  # SGLang's --balance-abs-threshold default (0.3.x)
BALANCE_REL = 1.5  # --balance-rel-threshold
CACHE_THRESHOLD = 0.3  # --cache-threshold
SLO_TTFT_S, SLO_TPOT_S = 0.5, 0.05


@dataclass(frozen=True)
class LlmFleetSpec:
    """A fleet and its chat traffic; ``sessions_per_pod_s`` scales the load with M."""

    pods: int = 100
    replicas: int = 8
    duration_s: float = 10.0
    sessions_per_pod_s: float = 0.375  # the loadtests' "equal": 1.5 sessions/s on 4 pods
    system_prompts_per_pod: float = 4.0
    slow_share: float = 0.0  # pods 3x slower, one in ten when 0.1
    sessions_per_user: int = 1  # consecutive sessions sharing one ``user`` key
    costs: EngineCosts = field(default_factory=lambda: EngineCosts(kv_blocks=4000, max_running=64))
    seed: int = 1

    def workload(self) -> WorkloadSpec:
        return WorkloadSpec(
            kind="chat",
            sessions_per_s=self.sessions_per_pod_s * self.pods,
            system_prompts=max(1, round(self.system_prompts_per_pod * self.pods)),
        )


def user_key(session: int, sessions_per_user: int) -> str:
    """The ``user`` field of session number ``session``'s requests."""
    return f"user-{session // sessions_per_user}"


class ReplicaView:
    """What one gateway replica knows: its own in-flight counts and prefix history."""

    def __init__(self, pods: int) -> None:
        self.inflight = [0] * pods
        self.owner: dict[int, int] = {}  # block key -> pod this replica last sent it to
        self.history = [0] * pods  # blocks this replica attributes to each pod

    def remember(self, keys: list[int], pod: int) -> None:
        for key in keys:
            old = self.owner.get(key)
            if old != pod:
                if old is not None:
                    self.history[old] -= 1
                self.owner[key] = pod
                self.history[pod] += 1


def _argmin(values: list[int], rng: random.Random) -> int:
    """An index of the smallest value, ties broken at random (by index, every replica of a
    fresh fleet would pick the same first pod)."""
    low = min(values)
    return rng.choice([i for i, v in enumerate(values) if v == low])


def _cache_aware(view: ReplicaView, keys: list[int], rng: random.Random) -> int:
    loads = view.inflight
    high, low = max(loads), min(loads)
    if high - low > BALANCE_ABS and high > low * BALANCE_REL:
        return _argmin(loads, rng)
    matched, pod = 0, -1
    for key in keys:
        owner = view.owner.get(key)
        if owner is None:
            break
        matched, pod = matched + 1, owner
    if keys and matched / len(keys) > CACHE_THRESHOLD:
        return pod
    return _argmin(view.history, rng)


def _oracle(pods: list[SimLlmPod], prompt_tokens: int, keys: list[int]) -> int:
    def ttft_s(pod: SimLlmPod) -> float:
        costs = pod.engine.costs
        tokens = pod.queued_prefill_tokens() + pod.uncached_tokens(prompt_tokens, keys)
        steps = math.ceil(tokens / costs.chunk_tokens)
        decode = len(pod.engine.running) * costs.decode_per_seq_s
        return (
            tokens * costs.prefill_per_token_s + steps * (costs.step_s + decode)
        ) * pod.slow_factor

    return min(range(len(pods)), key=lambda i: ttft_s(pods[i]))


def pick(
    router: str,
    view: ReplicaView,
    pods: list[SimLlmPod],
    prompt: list[str],
    keys: list[int],
    rng: random.Random,
) -> int:
    if router == "random":
        return rng.randrange(len(pods))
    if router == "least_request":
        a, b = rng.randrange(len(pods)), rng.randrange(len(pods))
        return a if view.inflight[a] <= view.inflight[b] else b
    if router == "cache_aware":
        return _cache_aware(view, keys, rng)
    if router == "oracle":
        return _oracle(pods, len(prompt), keys)
    raise ValueError(f"unknown router {router!r}; known: {ROUTERS}")


@dataclass
class _Request:
    session: int
    turn: int
    replica: int
    pod: int
    sent_s: float
    ttft_s: float = math.inf
    attempt: SimTry | None = None  # a tailgate replica's record of the try


@dataclass
class FleetResult:
    router: str
    requests: int
    ttft_p50_s: float
    ttft_p99_s: float
    tpot_p50_s: float
    slo_share: float
    hit_rate: float
    kept_share: float  # follow-up turns served by the previous turn's pod
    busiest_x: float  # the most requests one pod served, over the mean per pod
    wall_s: float


class _FleetRun:
    """One router's run: sessions, pods and replica views on one heap of virtual time."""

    TURN, STEP, REFRESH, SCRAPE = 0, 1, 2, 3
    TURN_BITS = 8  # a heap entry's index packs (session, turn) as session << 8 | turn

    def __init__(self, spec: LlmFleetSpec, router: str) -> None:
        self.spec, self.router = spec, router
        self.rng = random.Random(spec.seed * 7 + 1)
        self.sessions: list[Session] = plan(
            spec.workload(), spec.duration_s, random.Random(spec.seed)
        )
        slow = round(spec.slow_share * spec.pods)
        self.pods = [SimLlmPod(i, spec.costs, 3.0 if i < slow else 1.0) for i in range(spec.pods)]
        self.views = [ReplicaView(spec.pods) for _ in range(spec.replicas)]
        self.tailgate = (
            [TailgateReplica(router, spec.pods, 0.0) for _ in range(spec.replicas)]
            if router.startswith("tailgate ")
            else []
        )
        self.open_sessions = len(self.sessions)
        self.last_pod: dict[int, int] = {}  # session -> pod of its previous turn
        self.follow_ups = self.kept = 0
        self.served = [0] * spec.pods  # requests sent to each pod
        self.history = [
            [{"role": "system", "content": s.system}] if s.system else [] for s in self.sessions
        ]
        self.order = itertools.count()
        self.heap: list[tuple[float, int, int, int]] = []  # (time, tie, kind, index)
        self.live: dict[Sequence, _Request] = {}
        self.ttft_s: list[float] = []
        self.tpot_s: list[float] = []
        self.good = 0

    def run(self) -> None:
        for number, session in enumerate(self.sessions):
            self._push(session.start_s, self.TURN, number << self.TURN_BITS)
        if self.tailgate:
            for replica in range(len(self.tailgate)):  # each replica's upkeep on its own phase
                phase = self.rng.random()
                self._push(phase * REFRESH_S, self.REFRESH, replica)
                self._push(phase * SCRAPE_S, self.SCRAPE, replica)
        while self.heap:
            now, _, kind, index = heapq.heappop(self.heap)
            if kind == self.TURN:
                self._send(now, *divmod(index, 1 << self.TURN_BITS))
            elif kind == self.STEP:
                self._step_done(now, self.pods[index])
            elif self.open_sessions > 0:  # upkeep stops with the traffic
                self._upkeep(now, kind, index)

    def _upkeep(self, now: float, kind: int, replica: int) -> None:
        gateway = self.tailgate[replica]
        if kind == self.REFRESH:
            gateway.refresh(now)
            self._push(now + REFRESH_S, kind, replica)
            return
        for pod in self.pods:
            engine = pod.engine
            depth = len(engine.waiting) + len(engine.running)
            gateway.scrape(pod.index, depth, engine.kv_usage(), now)
        self._push(now + SCRAPE_S, kind, replica)

    def _push(self, at_s: float, kind: int, index: int) -> None:
        heapq.heappush(self.heap, (at_s, next(self.order), kind, index))

    def _start_step(self, pod: SimLlmPod, now: float) -> None:
        end = pod.start_step(now)
        if end is not None:
            self._push(end, self.STEP, pod.index)

    def _send(self, now: float, session: int, turn: int) -> None:
        planned = self.sessions[session].turns[turn]
        self.history[session].append({"role": "user", "content": planned.user})
        prompt = chat_tokens(self.history[session])
        keys = chain_keys(prompt, self.spec.costs.block_tokens)
        replica = self.rng.randrange(self.spec.replicas)
        view = self.views[replica]
        attempt = None
        if self.tailgate:
            gateway = self.tailgate[replica]
            user = user_key(session, self.spec.sessions_per_user)
            info = gateway.parse(self.history[session], planned.max_tokens, user)
            target = gateway.pick(info, now, self.rng)
            attempt = gateway.send(target, info, now)
        else:
            target = pick(self.router, view, self.pods, prompt, keys, self.rng)
        view.inflight[target] += 1
        view.remember(keys, target)
        if turn > 0:
            self.follow_ups += 1
            self.kept += self.last_pod.get(session) == target
        self.last_pod[session] = target
        self.served[target] += 1
        pod = self.pods[target]
        was_idle = pod.idle
        seq = pod.submit(prompt, planned.max_tokens, now)
        self.live[seq] = _Request(session, turn, replica, target, now, attempt=attempt)
        if was_idle:
            self._start_step(pod, now)

    def _step_done(self, now: float, pod: SimLlmPod) -> None:
        for seq in pod.end_step():
            req = self.live[seq]
            if len(seq.output) == 1:
                req.ttft_s = now - req.sent_s
                if req.attempt is not None:
                    self.tailgate[req.replica].first_token(req.attempt, now)
            if seq.finished:
                self._finished(now, seq, req)
        self._start_step(pod, now)

    def _finished(self, now: float, seq: Sequence, req: _Request) -> None:
        del self.live[seq]
        self.views[req.replica].inflight[req.pod] -= 1
        tpot_s = (now - req.sent_s - req.ttft_s) / max(len(seq.output) - 1, 1)
        self.ttft_s.append(req.ttft_s)
        self.tpot_s.append(tpot_s)
        self.good += req.ttft_s <= SLO_TTFT_S and tpot_s <= SLO_TPOT_S
        answer = " ".join(seq.output)
        if req.attempt is not None:
            # The stream as the gateway relays it: each token after a space.
            self.tailgate[req.replica].finished(req.attempt, " " + answer, now)
        self.history[req.session].append({"role": "assistant", "content": answer})
        turns = self.sessions[req.session].turns
        if req.turn + 1 < len(turns):
            at = now + turns[req.turn + 1].think_s
            self._push(at, self.TURN, req.session << self.TURN_BITS | req.turn + 1)
        else:
            self.open_sessions -= 1


def simulate(spec: LlmFleetSpec, router: str) -> FleetResult:
    """Run every planned session to its end under ``router``; virtual time, no sleeping."""
    started = time.perf_counter()
    fleet = _FleetRun(spec, router)
    fleet.run()
    queries = sum(p.engine.counters.prefix_queries_tokens for p in fleet.pods)
    hits = sum(p.engine.counters.prefix_hits_tokens for p in fleet.pods)
    ttft, tpot = sorted(fleet.ttft_s), sorted(fleet.tpot_s)
    return FleetResult(
        router,
        len(ttft),
        percentile(ttft, 50),
        percentile(ttft, 99),
        percentile(tpot, 50),
        fleet.good / len(ttft) if ttft else 0.0,
        hits / queries if queries else math.nan,
        fleet.kept / fleet.follow_ups if fleet.follow_ups else math.nan,
        max(fleet.served) * len(fleet.served) / len(ttft) if ttft else math.nan,
        time.perf_counter() - started,
    )


def markdown(spec: LlmFleetSpec, results: list[FleetResult]) -> str:
    shared = spec.sessions_per_user
    users = f", {shared} sessions per user key" if shared > 1 else ""
    lines = [
        f"G = {spec.replicas}, M = {spec.pods}, {spec.duration_s:g} s of session starts, "
        f"{spec.slow_share:.0%} of pods 3x slower{users}",
        "",
        "| router | requests | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | within SLO "
        "| prefix hits | follow-ups kept | busiest pod x mean | sim wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.router} | {r.requests} | {r.ttft_p50_s * 1000:.1f} "
            f"| {r.ttft_p99_s * 1000:.1f} | {r.tpot_p50_s * 1000:.2f} "
            f"| {r.slo_share:.1%} | {r.hit_rate:.1%} | {r.kept_share:.1%} "
            f"| {r.busiest_x:.1f} | {r.wall_s:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backends", "-M", type=int, default=100)
    parser.add_argument("--replicas", "-G", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of session starts")
    parser.add_argument("--load", type=float, default=0.375, help="sessions/s per pod")
    parser.add_argument("--slow-share", type=float, default=0.0)
    parser.add_argument(
        "--router",
        action="append",
        help=f"one of {ROUTERS}; a tailgate router may add balancer.prefix fields (name=value, "
        "or a boolean field's name to turn it on)",
    )
    parser.add_argument(
        "--sessions-per-user",
        type=int,
        default=1,
        help="consecutive sessions that share one `user` key (1: a key per session)",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.sessions_per_user < 1:
        parser.error("--sessions-per-user must be at least 1")
    spec = replace(
        LlmFleetSpec(),
        pods=args.backends,
        replicas=args.replicas,
        duration_s=args.duration,
        sessions_per_pod_s=args.load,
        slow_share=args.slow_share,
        sessions_per_user=args.sessions_per_user,
        seed=args.seed,
    )
    results = [simulate(spec, router) for router in (args.router or ROUTERS)]
    print(markdown(spec, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
