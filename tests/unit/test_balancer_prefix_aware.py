"""prefix_aware: predicted time to first token from queued work and the cached prefix, with a
bounded-load guard on affinity, homes on a ring, and weighted_score for requests without a
prompt."""

import json
import random
from collections import Counter
from typing import Any

import pytest

from gateway.affinity import BLOCK_CHARS
from gateway.balancer.base import SimpleCandidate
from gateway.balancer.prefix_aware import (
    HOME_BLOCKS,
    SESSION_SPREAD,
    TOKENS_PER_BLOCK,
    PrefixAware,
)
from gateway.balancer.weighted_score import WeightedScore
from gateway.request_info import RequestInfo
from gateway.request_parse import parse_request

ALPHA, BETA, DEFAULT_S, QUEUE_WEIGHT = 0.6, 0.4, 0.1, 0.1


def policy(load_bound: float = 0.25, session_affinity: bool = False) -> PrefixAware:
    return PrefixAware(ALPHA, BETA, DEFAULT_S, 10_000, load_bound, session_affinity, QUEUE_WEIGHT)


def fleet(n: int) -> list[SimpleCandidate]:
    return [SimpleCandidate.new(f"pod-{i}", now=0.0) for i in range(n)]


def chat(system: str, *turns: str) -> RequestInfo:
    messages = [{"role": "system", "content": system * (8 * BLOCK_CHARS // len(system))}]
    messages += [{"role": "user", "content": t * (2 * BLOCK_CHARS // len(t))} for t in turns]
    return parse_request(json.dumps({"messages": messages}).encode(), {}, with_blocks=True)


def send(p: PrefixAware, c: SimpleCandidate, request: RequestInfo, now: float = 0.0) -> None:
    """What the gateway does for a try: record it, and count its work in flight."""
    cached = p.sent(c.name, request)
    c.signals.request_started(now)
    c.signals.work.started(request.prompt_tokens - cached, request.output_tokens)


def finish(c: SimpleCandidate) -> None:
    c.signals.headers_received(0.0)
    c.signals.request_finished(0.05, 0.0, started_at=0.0, headers_seen=True)
    c.signals.work.prefill_tokens = c.signals.work.decode_tokens = 0


def test_the_next_turn_goes_where_the_conversation_is_cached() -> None:
    pods = fleet(8)
    p = policy()
    p.refresh(pods, 0.0)
    rng = random.Random(1)
    first = chat("sys-a ", "hello ")
    holder = p.pick(pods, 0.0, rng, first)
    send(p, holder, first)
    finish(holder)
    p.refresh(pods, 0.0)
    follow_up = chat("sys-a ", "hello ", "more ")
    assert all(p.pick(pods, 0.0, rng, follow_up) is holder for _ in range(50))


def test_cost_counts_only_the_uncached_prompt() -> None:
    pods = fleet(2)
    p = policy()
    p.refresh(pods, 0.0)
    request = chat("sys ", "q ")
    cold = p.request_cost(pods[0], request, 0, 0.0)
    warm = p.request_cost(pods[0], request, len(request.blocks), 0.0)
    s_per_token = DEFAULT_S / 1000
    uncached = request.prompt_tokens - len(request.blocks) * TOKENS_PER_BLOCK
    assert warm == pytest.approx(ALPHA * s_per_token * max(TOKENS_PER_BLOCK, uncached) / DEFAULT_S)
    assert cold == pytest.approx(ALPHA * s_per_token * request.prompt_tokens / DEFAULT_S)


def test_bounded_load_guard_keeps_affinity_off_an_overloaded_holder() -> None:
    pods = fleet(4)
    p = policy(load_bound=0.25)
    request = chat("hot ", "x ")
    send(p, pods[0], request)
    for _ in range(9):  # pods[0] holds the prompt and 10 requests; the others 2 each
        pods[0].signals.request_started(0.0)
    for pod in pods[1:]:
        pod.signals.request_started(0.0)
        pod.signals.request_started(0.0)
    p.refresh(pods, 0.0)  # mean load 4: the bound is 1.25 * 4 + 1 = 6
    rng = random.Random(3)
    got = Counter(p.pick(pods, 0.0, rng, request).name for _ in range(300))
    # only p2c's random draws can reach pods[0] now, and its queue term loses them
    assert got["pod-0"] < 300 // 4
    allowed = p._allowed_for(pods)
    over, under = (p._first_open((c.name,), allowed, 0.0) for c in pods[:2])
    assert over is None and under is not None  # the bound, not failure or distrust, decides


def test_home_is_the_same_for_every_replica_and_moves_on_when_full() -> None:
    request = chat("shared ", "first visit ")
    homes = set()
    for seed in range(8):  # eight replicas, nothing learnt, each its own RNG and fleet view
        pods = fleet(16)
        p = policy()
        p.refresh(pods, 0.0)
        homes.add(p.pick(pods, 0.0, random.Random(seed), request).name)
    assert len(homes) == 1
    pods = fleet(16)
    p = policy()
    p.refresh(pods, 0.0)
    home = next(c for c in pods if c.name in homes)
    for _ in range(5):
        home.signals.request_started(0.0)
    p.refresh(pods, 0.0)
    successor = p._home(request.blocks[HOME_BLOCKS - 1], p._allowed_for(pods), 0.0)
    assert successor is not None and successor[0] is not home


def test_a_slower_backend_predicts_slower_and_is_avoided_even_when_warm() -> None:
    pods = fleet(2)
    slow, fast = pods
    p = policy()
    request = chat("sys ", "question ")
    send(p, slow, request)  # slow holds the prompt's cache
    finish(slow)
    for tokens in (64, 2000):  # measured: 30x the fast one's time per token
        slow.signals.work.first_token(0, ttft_s=3e-3 * tokens, tokens_ahead=tokens)
        fast.signals.work.first_token(0, ttft_s=1e-4 * tokens, tokens_ahead=tokens)
    p.refresh(pods, 0.0)
    assert p.request_cost(slow, request, len(request.blocks), 0.0) > p.request_cost(
        fast, request, 0, 0.0
    )
    assert p.pick(pods, 0.0, random.Random(0), request) is fast


def test_refresh_forgets_backends_that_left_or_were_ejected() -> None:
    pods = fleet(3)
    p = policy()
    request = chat("sys ", "q ")
    send(p, pods[0], request)
    p.refresh(pods[1:], 0.0)  # pods[0] is no longer a candidate
    assert p.index.blocks_held("pod-0") == 0
    assert p.index.deepest_holders(request.blocks) == (0, set())


def test_session_affinity_sends_a_session_to_one_backend_within_the_bound() -> None:
    pods = fleet(8)
    p = policy(session_affinity=True)
    p.refresh(pods, 0.0)
    rng = random.Random(0)
    request = RequestInfo(session="user-42")
    picked = {p.pick(pods, 0.0, rng, request).name for _ in range(50)}
    assert len(picked) == 1
    others = Counter(p.pick(pods, 0.0, rng, RequestInfo(session=f"u{i}")).name for i in range(400))
    assert len(others) == 8  # sessions spread over the fleet


def test_without_a_prompt_it_scores_as_weighted_score() -> None:
    pods = fleet(3)
    for i, pod in enumerate(pods):
        pod.signals.request_started(0.0)
        pod.signals.request_finished(0.1 * (i + 1), 0.0)
    p = policy()
    p.refresh(pods, 0.0)
    rng_a, rng_b = random.Random(5), random.Random(5)
    plain = WeightedScore(ALPHA, BETA, "p2c", DEFAULT_S)
    plain.refresh(pods, 0.0)
    for _ in range(20):
        assert p.pick(pods, 0.0, rng_a, RequestInfo()) is plain.pick(pods, 0.0, rng_b)


def test_a_nearly_full_kv_cache_counts_as_load() -> None:
    pods = fleet(2)
    for pod in pods:
        pod.signals.request_started(0.0)
    p = policy()
    p.refresh(pods, 0.0)
    request = chat("sys ", "q ")
    before = p.request_cost(pods[0], request, 0, 0.0)
    pods[0].signals.report_kv_usage(0.99, 0.0)
    after = p.request_cost(pods[0], request, 0, 0.0)
    # 1 request now weighs 4.6
    assert after == pytest.approx(before + BETA * QUEUE_WEIGHT * 4.0 * 0.9)
    pods[1].signals.report_kv_usage(0.5, 0.0)  # far from full: no pressure
    assert p.request_cost(pods[1], request, 0, 0.0) == pytest.approx(before)


def test_the_streamed_answer_is_learnt_as_cached_where_it_was_written() -> None:
    """The next turn quotes the answer: the backend that wrote it matches that far too, not
    only as far as the previous prompt (which a backend holding only the system prompt
    nearly equals)."""
    p = policy()
    first = chat("sys ", "q1 ")
    answer = "an answer " * 80
    messages = [
        {"role": "system", "content": "sys " * (8 * BLOCK_CHARS // 4)},
        {"role": "user", "content": "q1 " * (2 * BLOCK_CHARS // 3)},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "q2 " * (2 * BLOCK_CHARS // 3)},
    ]
    nxt = parse_request(json.dumps({"messages": messages}).encode(), {}, with_blocks=True)
    p.sent("pod-0", first)
    before = p.index.matched_blocks("pod-0", nxt.blocks)
    assert before == len(first.blocks)
    p.answered("pod-0", first, answer)
    after = p.index.matched_blocks("pod-0", nxt.blocks)
    assert after >= before + len(answer) // BLOCK_CHARS
    assert p.index.matched_blocks("pod-1", nxt.blocks) == 0


def test_a_hedge_or_retry_learns_only_when_it_finishes_the_answer() -> None:
    """The first try learns at send; a second try (a hedge, a retry) only once its answer is
    whole, so a cancelled loser never claims the prompt."""
    p = policy()
    request = chat("sys ", "q1 ")
    p.sent("pod-0", request)
    p.sent("pod-1", request, learn=False)  # the hedge
    assert p.index.matched_blocks("pod-1", request.blocks) == 0
    p.answered("pod-1", request, "the answer " * 40)  # the hedge won
    assert p.index.matched_blocks("pod-1", request.blocks) == len(request.blocks)


def test_the_index_bound_follows_the_kv_cache_size_a_backend_reports() -> None:
    pods = fleet(2)
    p = policy()
    pods[0].signals.report_cache_tokens(round(20 * TOKENS_PER_BLOCK))
    p.refresh(pods, 0.0)
    assert p.index.capacity_of("pod-0") == 20
    assert p.index.capacity_of("pod-1") == 10_000  # reports nothing: the configured bound
    long = json.dumps({"prompt": "".join(f"word{i} " for i in range(4000))}).encode()
    request = parse_request(long, {}, with_blocks=True)
    assert len(request.blocks) > 20
    send(p, pods[0], request)
    assert p.index.blocks_held("pod-0") == 20


def test_a_failed_try_forgets_the_backend_so_its_sessions_move_on() -> None:
    pods = fleet(4)
    p = policy()
    p.refresh(pods, 0.0)
    request = chat("sys-f ", "hello ")
    holder = p.pick(pods, 0.0, random.Random(0), request)
    send(p, holder, request)
    finish(holder)
    p.failed(holder.name, 0.0)
    assert p.index.blocks_held(holder.name) == 0
    assert p.index.deepest_holders(request.blocks) == (0, set())
    # nor is it the home any more: the prefix's home hands over to its ring successor
    found = p._home(request.blocks[HOME_BLOCKS - 1], p._allowed_for(pods), 1.0)
    assert found is not None and found[0] is not holder
    p.answered(holder.name, request, "it answers again")
    assert p.index.blocks_held(holder.name) > 0
    assert not p._failing(holder.name, 1.0)


def test_a_replica_that_knows_nothing_trusts_the_home_with_the_whole_prompt() -> None:
    """Another replica sent the conversation's earlier turns to the prefix's home: a replica
    whose index knows nothing deeper credits the home with all of it, so the follow-up goes
    there even against an idle backend; one that knows a deeper holder trusts its index."""
    pods = fleet(8)
    request = chat("sys-h ", "turn one ", "turn two ")
    p = policy()
    p.refresh(pods, 0.0)
    found = p._home(request.blocks[HOME_BLOCKS - 1], p._allowed_for(pods), 0.0)
    assert found is not None
    home = found[0]
    home.signals.request_started(0.0)  # busy with one stream, the others idle
    p.refresh(pods, 0.0)
    rng = random.Random(2)
    assert all(p.pick(pods, 0.0, rng, request) is home for _ in range(50))
    learnt = policy()
    learnt.trust_home = False
    learnt.refresh(pods, 0.0)
    assert {learnt.pick(pods, 0.0, rng, request).name for _ in range(50)} != {home.name}
    elsewhere = next(c for c in pods if c is not home)
    send(p, elsewhere, request)  # this replica sent it elsewhere: it knows better
    finish(elsewhere)
    p.refresh(pods, 0.0)
    assert all(p.pick(pods, 0.0, rng, request) is elsewhere for _ in range(50))


def test_a_home_measured_slow_is_not_trusted_with_a_prompt_it_is_not_known_to_hold() -> None:
    """A cold prompt sent to a slow home on trust would be prefilled there at its speed."""
    pods = fleet(4)
    request = chat("sys-slow ", "first visit ")
    p = policy()
    p.refresh(pods, 0.0)
    found = p._home(request.blocks[HOME_BLOCKS - 1], p._allowed_for(pods), 0.0)
    assert found is not None
    home = found[0]
    for pod in pods:  # measured: the home prefills 3x slower than the others
        per_token = 3e-4 if pod is home else 1e-4
        for tokens in (64, 2000):
            pod.signals.work.first_token(0, ttft_s=per_token * tokens, tokens_ahead=tokens)
    p.refresh(pods, 0.0)
    rng = random.Random(4)
    assert all(p.pick(pods, 0.0, rng, request) is not home for _ in range(50))


def measured(c: SimpleCandidate, latency_s: float, now: float = 0.0) -> None:
    """One answered, non-streamed try at ``c`` that took ``latency_s``."""
    c.signals.request_started(now - latency_s)
    c.signals.headers_received(now - latency_s)
    c.signals.request_finished(latency_s, now, started_at=now - latency_s, headers_seen=True)


def measured_fleet(
    n: int, latency_s: float, **policy_args: Any
) -> tuple[list[SimpleCandidate], PrefixAware]:
    """``n`` backends that each answered once in ``latency_s``, and a policy refreshed on them."""
    pods = fleet(n)
    p = policy(**policy_args)
    for pod in pods:
        measured(pod, latency_s)
    p.refresh(pods, 0.0)
    return pods, p


def home_of(p: PrefixAware, pods: list[SimpleCandidate], request: RequestInfo) -> SimpleCandidate:
    found = p._home(request.blocks[HOME_BLOCKS - 1], p._allowed_for(pods), 0.0)
    assert found is not None
    return next(c for c in pods if c is found[0])


def test_a_home_with_requests_stuck_waiting_hands_over_and_is_not_picked() -> None:
    """A hung home: what it holds has waited 20x its usual answer. Its affinity goes to its
    ring successor, and the pick sends the prompt elsewhere, though it holds the cache."""
    pods, p = measured_fleet(4, 0.025, load_bound=1.0)
    request = chat("sys-hang ", "hello ")
    home = home_of(p, pods, request)
    send(p, home, request)  # it holds the prompt too
    home.signals.request_started(0.0)  # and one more, unanswered since
    now = 0.5
    p.refresh(pods, now)
    assert p._distrusted(home, now)
    successor = p._home(request.blocks[HOME_BLOCKS - 1], p._allowed_for(pods), now)
    assert successor is not None and successor[0] is not home
    rng = random.Random(3)
    assert all(p.pick(pods, now, rng, request) is not home for _ in range(100))


def test_a_hung_home_whose_tries_lost_to_their_hedges_does_not_look_idle() -> None:
    """Its stuck tries were cancelled (their hedges answered), so it holds nothing in flight:
    the lower bounds those tries taught its latency keep it out of affinity."""
    pods, p = measured_fleet(3, 0.025, load_bound=1.0)
    request = chat("sys-hedged ", "hello ")
    home = home_of(p, pods, request)
    for pod in pods:
        if pod is not home:
            pod.signals.request_started(0.29)  # the others are busy, the home idle
    home.signals.request_started(0.1)  # a try that waited 200 ms and lost to its hedge:
    home.signals.request_finished(0.2, 0.3, started_at=0.1)  # its wait, a lower bound
    p.refresh(pods, 0.3)
    assert home.signals.in_flight == 0
    rng = random.Random(5)
    assert all(p.pick(pods, 0.3, rng, request) is not home for _ in range(100))


def test_without_a_ttft_line_the_measured_latency_is_the_prediction() -> None:
    """Non-streamed answers fit no TTFT line: a backend measured 4x slower must not predict
    like the fleet's prior line."""
    pods = fleet(3)
    slow, fast, other = pods
    p = policy()
    for pod, latency_s in ((slow, 0.1), (fast, 0.025), (other, 0.025)):
        measured(pod, latency_s)
    p.refresh(pods, 0.0)
    request = chat("sys-ns ", "q ")
    assert p.request_cost(slow, request, len(request.blocks), 0.0) > p.request_cost(
        fast, request, 0, 0.0
    )
    rng = random.Random(6)
    assert all(p.pick(pods, 0.0, rng, request) is not slow for _ in range(100))


def test_a_holder_a_little_slower_than_the_fleet_keeps_its_affinity() -> None:
    """Only a backend at OUTLIER_LATENCY x the fleet's latency loses its affinity: one 1.25x
    slower (a cold prefill just measured: 50 ms, the fleet 40) still draws the turns whose
    cache it holds."""
    pods, p = measured_fleet(4, 0.04, load_bound=1.0)
    request = chat("sys-warm ", "hello ")
    holder = p.pick(pods, 0.0, random.Random(7), request)
    send(p, holder, request)
    finish(holder)  # its answer took 50 ms
    p.refresh(pods, 0.0)
    assert not p._distrusted(holder, 0.0)
    rng = random.Random(8)
    follow_up = chat("sys-warm ", "hello ", "again ")
    assert sum(p.pick(pods, 0.0, rng, follow_up) is holder for _ in range(100)) >= 90


def session_chat(system: str, session: str, *turns: str) -> RequestInfo:
    """A chat body whose ``user`` field is the session key."""
    messages = [{"role": "system", "content": system * (8 * BLOCK_CHARS // len(system))}]
    messages += [{"role": "user", "content": t * (2 * BLOCK_CHARS // len(t))} for t in turns]
    body = {"messages": messages, "user": session}
    return parse_request(json.dumps(body).encode(), {}, with_blocks=True)


def spread_of(p: PrefixAware, request: RequestInfo) -> tuple[str, ...]:
    """The first ``SESSION_SPREAD`` ring successors of the prompt's home."""
    return p._walk(request.blocks[HOME_BLOCKS - 1])[:SESSION_SPREAD]


def test_a_session_stays_on_one_backend_across_turns_and_replicas() -> None:
    """Every turn of the conversation shares the system prompt's home, so the key keeps it
    on one backend, the same on a replica that never saw its earlier turns."""
    pods = fleet(16)
    p = policy(load_bound=1.0, session_affinity=True)
    p.refresh(pods, 0.0)
    rng = random.Random(0)
    turns = ("first ", "second ", "third ", "fourth ")
    first = session_chat("sys-s ", "conv-7", turns[0])
    chosen = p.pick(pods, 0.0, rng, first)
    assert chosen.name in spread_of(p, first)
    for n in range(1, len(turns) + 1):
        request = session_chat("sys-s ", "conv-7", *turns[:n])
        picked = p.pick(pods, 0.0, rng, request)
        assert picked is chosen
        send(p, picked, request)
        finish(picked)
        p.refresh(pods, 0.0)
    other, other_pods = policy(load_bound=1.0, session_affinity=True), fleet(16)
    other.refresh(other_pods, 0.0)
    last = session_chat("sys-s ", "conv-7", *turns)
    assert other.pick(other_pods, 0.0, rng, last).name == chosen.name


def test_the_sessions_of_one_system_prompt_spread_over_its_first_successors_only() -> None:
    pods = fleet(16)
    p = policy(load_bound=1.0, session_affinity=True)
    p.refresh(pods, 0.0)
    rng = random.Random(1)
    requests = [session_chat("sys-shared ", f"conv-{i}", "hello ") for i in range(200)]
    got = Counter(p.pick(pods, 0.0, rng, r).name for r in requests)
    spread = spread_of(p, requests[0])
    assert len(spread) == SESSION_SPREAD and set(got) == set(spread)
    assert min(got.values()) > 200 // (2 * SESSION_SPREAD)


@pytest.mark.parametrize("closed_by", ["load", "failure", "silence"])
def test_a_session_skips_a_successor_over_the_bound_failing_or_not_answering(
    closed_by: str,
) -> None:
    """The session's first choice closed, it goes to the next of the prompt home's successors
    in its order; with all of them closed it has no session home, and the pick scores."""
    # most answer: the fleet's latency stays that of an answering backend
    pods, p = measured_fleet(16, 0.025, load_bound=0.25, session_affinity=True)
    request = session_chat("sys-closed ", "conv-3", "hello ")
    rng = random.Random(2)
    clock = [0.0]

    def close(c: SimpleCandidate) -> None:
        if closed_by == "load":  # 5 requests, far over (1 + 0.25) x the mean + 1
            for _ in range(5):
                c.signals.request_started(clock[0])
        elif closed_by == "failure":
            p.failed(c.name, clock[0])
        else:  # a try left unanswered for 20x the fleet's latency
            c.signals.request_started(clock[0])
            clock[0] += 0.5
        p.refresh(pods, clock[0])

    order = [p.pick(pods, 0.0, rng, request)]
    for _ in range(SESSION_SPREAD):
        close(order[-1])
        found = p._session_home("conv-3", request.blocks, p._allowed_for(pods), clock[0])
        if found is None:
            break
        order.append(found)
    assert len(order) == SESSION_SPREAD  # each closed one handed over, the last to none
    assert {c.name for c in order} == set(spread_of(p, request))
    keyed = [p.pick(pods, clock[0], random.Random(i), request) for i in range(20)]
    p.session_affinity = False
    assert keyed == [p.pick(pods, clock[0], random.Random(i), request) for i in range(20)]


def test_a_prompt_without_a_full_block_keeps_the_session_ring() -> None:
    """No full block, no prompt home: the key's own place on the ring, so such sessions
    spread over the whole fleet."""
    pods = fleet(8)
    p = policy(session_affinity=True)
    p.refresh(pods, 0.0)
    rng = random.Random(3)

    def short(session: str) -> RequestInfo:
        body = {"messages": [{"role": "user", "content": "hi"}], "user": session}
        return parse_request(json.dumps(body).encode(), {}, with_blocks=True)

    assert not short("u1").blocks and short("u1").session == "u1"
    for i in range(20):
        assert p.pick(pods, 0.0, rng, short(f"u{i}")) is p.pick(
            pods, 0.0, rng, RequestInfo(session=f"u{i}")
        )
    assert len({p.pick(pods, 0.0, rng, short(f"u{i}")).name for i in range(400)}) == 8
