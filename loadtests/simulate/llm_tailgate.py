"""tailgate's own policies as routers of the LLM fleet simulator, one policy per replica.

Each gateway replica builds its policy from ``gateway.balancer.POLICIES`` (through the
config's defaults, as the gateway does), keeps its own :class:`EndpointSignals` for every pod
and its own prefix index, and sees only the 1/G of the traffic sent through it. Every request
goes the gateway's way: the JSON body is parsed by ``gateway.request_parse.parse_request``,
the pick is ``policy.pick(candidates, now, rng, request)``, and the record path makes the
calls :class:`gateway.attempt.Attempt` and :class:`gateway.runtime.Runtime` make: the work
sent (``sent``: prompt tokens expected cached), the first token (the TTFT line's sample), the
end of the try (latency, in-flight) and the streamed answer (``answered``). Off the request
path, as the gateway's background tasks: a policy refresh every 250 ms and a /metrics scrape
of every pod each ``queue_depth.scrape_interval`` (requests held and KV usage).

A router is named ``tailgate POLICY`` or, for prefix_aware, ``tailgate prefix_aware
no-home`` (the consistent-hash home off, the learnt index alone), to measure what the home
is worth across replicas, or ``tailgate prefix_aware session_affinity`` (the policy with
``balancer.prefix.session_affinity`` on: each chat body carries its session's ``user``, as a
client SDK sends it, and the key picks its pod among the first successors of its prompt's
home; ``session_spread=K`` sets how many).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.balancer import READS_PROMPT_BLOCKS, Policy, SimpleCandidate, build_policy
from gateway.balancer.prefix_aware import PrefixAware
from gateway.config.model import GatewayConfig
from gateway.request_info import RequestInfo
from gateway.request_parse import parse_request

TAILGATE_ROUTERS = (
    "tailgate prefix_aware",
    "tailgate prefix_aware no-home",
    "tailgate prefix_aware home-learnt",
    "tailgate prefix_aware session_affinity",
    "tailgate weighted_score",
    "tailgate least_request",
)
FLAGS = {
    "no-home": lambda p: setattr(p, "home_blocks", 0),
    "home-learnt": lambda p: setattr(p, "trust_home", False),
}
# prefix_aware attributes that are no config field, set as ``name=value`` (an integer)
SETTINGS = ("session_spread",)
REFRESH_S = 0.25  # gateway.maintenance's policy refresh
MODEL = "sim"


def build_replica_policy(router: str) -> Policy:
    """The policy a replica runs for ``router``: ``tailgate POLICY`` then optional words, each
    a numeric ``balancer.prefix`` field or one of :data:`SETTINGS` as ``name=value``, the name
    of a boolean field (turned on, e.g. ``session_affinity``) or a flag of :data:`FLAGS`;
    built from the gateway's default config with only those changed."""
    name, *words = router.removeprefix("tailgate ").split()
    base = GatewayConfig()
    defaults = base.balancer.prefix
    switches = {
        f.name for f in dataclasses.fields(defaults) if isinstance(getattr(defaults, f.name), bool)
    }
    pairs = [(k, v) for k, _, v in (w.partition("=") for w in words if "=" in w)]
    fields: dict[str, float | bool] = {k: float(v) for k, v in pairs if k not in SETTINGS}
    fields.update((w, True) for w in words if w in switches)
    prefix = dataclasses.replace(defaults, **fields)  # type: ignore[arg-type]
    balancer = dataclasses.replace(base.balancer, policy=name, prefix=prefix)
    policy = build_policy(balancer)
    for word in (w for w in words if "=" not in w):
        if not isinstance(policy, PrefixAware) or word not in FLAGS.keys() | switches:
            known = sorted(FLAGS.keys() | switches)
            raise ValueError(f"{router!r}: {word!r} is not a prefix_aware flag of {known}")
        if word in FLAGS:
            FLAGS[word](policy)
    for k, v in pairs:
        if k in SETTINGS:
            if not isinstance(policy, PrefixAware):
                raise ValueError(f"{router!r}: {k!r} is a prefix_aware setting")
            setattr(policy, k, int(v))
    return policy


def request_info(
    messages: Sequence[dict[str, str]], max_tokens: int, blocks: bool, user: str | None = None
) -> RequestInfo:
    """What the gateway's one parse reads from the chat body a client would send; ``user``
    is OpenAI's end-user field, the session key where no ``session_header`` is configured."""
    body: dict[str, object] = {
        "model": MODEL,
        "messages": list(messages),
        "max_tokens": max_tokens,
        "stream": True,
    }
    if user is not None:
        body["user"] = user
    return parse_request(json.dumps(body).encode(), {}, None, with_blocks=blocks)


@dataclass(slots=True)
class SimTry:
    """One request in flight at one pod, as a replica's Attempt would hold it."""

    pod: int
    request: RequestInfo
    started_s: float
    prefill_tokens: int
    decode_tokens: int
    tokens_ahead: int
    first_token_s: float | None = None


class TailgateReplica:
    """One gateway replica's policy, signals and index over the same M pods."""

    __slots__ = ("_blocks", "candidates", "policy")

    def __init__(self, router: str, pods: int, now: float) -> None:
        self.policy = build_replica_policy(router)
        self._blocks = self.policy.name in READS_PROMPT_BLOCKS
        balancer = GatewayConfig().balancer
        self.candidates = [
            SimpleCandidate.new(f"pod-{i}", now, config=balancer) for i in range(pods)
        ]
        self.policy.refresh(self.candidates, now)

    def parse(
        self, messages: Sequence[dict[str, str]], max_tokens: int, user: str | None = None
    ) -> RequestInfo:
        return request_info(messages, max_tokens, self._blocks, user)

    def pick(self, request: RequestInfo, now: float, rng: random.Random) -> int:
        chosen = self.policy.pick(self.candidates, now, rng, request)
        return int(chosen.name.removeprefix("pod-"))

    def send(self, pod: int, request: RequestInfo, now: float) -> SimTry:
        """The first try goes to ``pod``: what ``Runtime.work_sent`` and ``Attempt.begin`` do."""
        candidate = self.candidates[pod]
        cached = 0
        sent = getattr(self.policy, "sent", None)
        if sent is not None and request.prompt_tokens > 0:
            cached = sent(candidate.name, request, True)
        prefill = max(0, request.prompt_tokens - cached)
        decode = request.output_tokens if request.prompt_tokens > 0 else 0
        signals = candidate.signals
        signals.request_started(now)
        ahead = signals.work.started(prefill, decode)
        return SimTry(pod, request, now, prefill, decode, ahead)

    def first_token(self, attempt: SimTry, now: float) -> None:
        """The stream's first token: as ``Attempt.got_first_body_byte``."""
        attempt.first_token_s = now
        signals = self.candidates[attempt.pod].signals
        signals.headers_received(attempt.started_s)
        ttft_s = now - attempt.started_s
        signals.work.first_token(attempt.prefill_tokens, ttft_s, attempt.tokens_ahead)

    def finished(self, attempt: SimTry, answer: str, now: float) -> None:
        """The stream ended whole: as ``Attempt.end``, then ``Runtime.answer_relayed``."""
        candidate = self.candidates[attempt.pod]
        signals = candidate.signals
        signals.work.finished(0, attempt.decode_tokens)
        first = attempt.first_token_s if attempt.first_token_s is not None else now
        signals.request_finished(
            first - attempt.started_s,
            now,
            duration_s=now - attempt.started_s,
            started_at=attempt.started_s,
            headers_seen=True,
        )
        answered = getattr(self.policy, "answered", None)
        if answered is not None:
            answered(candidate.name, attempt.request, answer)

    def refresh(self, now: float) -> None:
        self.policy.refresh(self.candidates, now)

    def scrape(self, pod: int, depth: float, kv_usage: float, now: float) -> None:
        """One pod's /metrics: requests it holds (waiting + running) and its KV usage."""
        signals = self.candidates[pod].signals
        signals.report_queue_depth(depth, now)
        signals.report_kv_usage(kv_usage, now)
