"""Planned LLM workloads and their summaries: one seed, one plan; failures rank slowest."""

import math
import random
from collections import Counter

from loadtests.llm.client import Outcome
from loadtests.llm.summary import Slo, cold_opens, summarize
from loadtests.llm.workloads import Session, Turn, WorkloadSpec, plan, system_prompt


def test_one_seed_gives_every_peer_the_same_plan() -> None:
    spec = WorkloadSpec(kind="chat", sessions_per_s=5.0)
    assert plan(spec, 10.0, random.Random(3)) == plan(spec, 10.0, random.Random(3))
    assert plan(spec, 10.0, random.Random(3)) != plan(spec, 10.0, random.Random(4))


def test_chat_system_prompts_follow_zipf_popularity() -> None:
    spec = WorkloadSpec(kind="chat", sessions_per_s=50.0, system_prompts=8, system_tokens=32)
    sessions = plan(spec, 20.0, random.Random(1))
    counts = Counter(s.system for s in sessions)
    ranked = [counts[system_prompt(i, 32)] for i in range(8)]
    assert ranked[0] > ranked[3] > ranked[7] > 0
    assert all(spec.turns_min <= len(s.turns) <= spec.turns_max for s in sessions)
    assert all(s.turns[0].think_s == 0 and s.turns[1].think_s > 0 for s in sessions)
    assert all(len(s.system.split()) == 32 for s in sessions)


def test_control_shares_no_system_prompt_and_sharegpt_has_none() -> None:
    control = plan(WorkloadSpec(kind="control", sessions_per_s=20.0), 5.0, random.Random(1))
    assert len({s.system for s in control}) == len(control)
    spec = WorkloadSpec(kind="sharegpt", sessions_per_s=50.0)
    mix = plan(spec, 5.0, random.Random(1))
    assert all(s.system == "" and len(s.turns) == 1 for s in mix)
    lengths = [len(s.turns[0].user.split()) for s in mix]
    outputs = [s.turns[0].max_tokens for s in mix]
    assert max(lengths) <= spec.max_prompt_tokens and max(outputs) <= spec.max_output_tokens
    assert min(lengths) < spec.prompt_tokens < max(lengths)  # a spread, not one length


def test_a_ramp_starts_more_sessions_at_its_end() -> None:
    spec = WorkloadSpec(kind="sharegpt", sessions_per_s=1.0, end_sessions_per_s=20.0)
    starts = [s.start_s for s in plan(spec, 20.0, random.Random(2))]
    assert sum(t >= 10 for t in starts) > 2 * sum(t < 10 for t in starts)


def _outcome(ttft_s: float, e2e_s: float, tokens: int, status: int = 200) -> Outcome:
    return Outcome(0, 0, 0.0, status=status, ttft_s=ttft_s, e2e_s=e2e_s, output_tokens=tokens)


def test_failures_rank_slowest_and_goodput_counts_only_requests_within_the_slo() -> None:
    outcomes = [_outcome(0.1, 1.1, 101) for _ in range(97)]  # TPOT 10 ms
    outcomes.append(_outcome(0.9, 1.9, 101))  # TTFT over the SLO
    outcomes.append(_outcome(0.1, 10.1, 101))  # TPOT 100 ms, over the SLO
    outcomes.append(_outcome(math.inf, math.inf, 0, status=500))
    s = summarize(outcomes, duration_s=10.0, slo=Slo(ttft_s=0.5, tpot_s=0.05))
    assert s.requests == 100 and s.errors == 1
    assert s.ttft_p50_s == 0.1 and s.ttft_p99_s == 0.9  # the failure is the 100th
    assert math.isinf(summarize(outcomes[-2:], 1.0, Slo()).ttft_p99_s)  # half failed
    assert s.goodput_rps == 9.7 and s.slo_share == 0.97
    assert math.isclose(s.tpot_p50_s, 0.01) and math.isclose(s.tpot_p99_s, 0.1)


def test_a_cold_open_is_a_first_turn_whose_system_prompt_no_earlier_session_carried() -> None:
    turn = (Turn("hi", 8, 0.0),)
    sessions = [
        Session(2.0, "shared", turn),  # started second: its prompt was opened by session 2
        Session(5.0, "other", turn),
        Session(1.0, "shared", turn),
        Session(6.0, "", turn),  # no system prompt: nothing to share
    ]
    cold = cold_opens(sessions)
    assert cold == {1, 2, 3}
    outcomes = [
        Outcome(0, 0, 2.0, status=200, ttft_s=0.02, e2e_s=0.5, output_tokens=8),
        Outcome(1, 0, 5.0, status=200, ttft_s=0.08, e2e_s=0.5, output_tokens=8),
        Outcome(2, 0, 1.0, status=200, ttft_s=0.09, e2e_s=0.5, output_tokens=8),
        Outcome(2, 1, 3.0, status=200, ttft_s=0.03, e2e_s=0.5, output_tokens=8),
    ]
    s = summarize(outcomes, 10.0, Slo(), cold)
    assert s.cold_opens == 2 and s.ttft_p99_s == 0.09
    assert s.ttft_warm_p99_s == 0.03  # a follow-up of a cold session is warm
