"""The LLM fleet on virtual time: every planned turn is served; caching routers hit more."""

from dataclasses import replace

import pytest

from loadtests.llm.workloads import plan
from loadtests.simulate.llm_fleet import LlmFleetSpec, simulate

pytestmark = pytest.mark.timeout(60)

SPEC = LlmFleetSpec(pods=4, replicas=1, duration_s=6.0)


def test_every_planned_turn_is_served_once() -> None:
    import random

    turns = sum(len(s.turns) for s in plan(SPEC.workload(), SPEC.duration_s, random.Random(1)))
    result = simulate(SPEC, "random")
    assert result.requests == turns and result.slo_share > 0


def test_prefix_aware_routing_hits_more_and_answers_sooner_than_random() -> None:
    spread = simulate(SPEC, "random")
    for router in ("cache_aware", "oracle"):
        aware = simulate(SPEC, router)
        assert aware.hit_rate > spread.hit_rate + 0.2, router
        assert aware.ttft_p50_s < spread.ttft_p50_s, router


def test_the_oracle_keeps_away_from_slow_pods() -> None:
    slow = replace(SPEC, slow_share=0.25)  # one pod of four, 3x slower
    assert simulate(slow, "oracle").tpot_p50_s < simulate(slow, "random").tpot_p50_s


def test_tailgate_policies_run_per_replica_and_prefix_aware_keeps_sessions() -> None:
    """tailgate's registered policies drive the replicas (each its own signals and index):
    prefix_aware keeps follow-ups on their pod and hits far more than weighted_score."""
    spread = simulate(SPEC, "tailgate weighted_score")
    aware = simulate(SPEC, "tailgate prefix_aware")
    assert aware.requests == spread.requests
    assert aware.hit_rate > spread.hit_rate + 0.2
    assert aware.kept_share > 0.8 > spread.kept_share


def test_a_tailgate_router_takes_prefix_fields_and_flags_and_rejects_unknown_ones() -> None:
    from gateway.balancer.prefix_aware import PrefixAware
    from loadtests.simulate.llm_tailgate import build_replica_policy

    policy = build_replica_policy("tailgate prefix_aware no-home load_bound=1")
    assert isinstance(policy, PrefixAware)
    assert policy.home_blocks == 0 and policy.load_bound == 1.0
    with pytest.raises(ValueError, match="no-home"):
        build_replica_policy("tailgate weighted_score no-home")


def test_each_session_sends_a_user_key_shared_by_sessions_per_user_consecutive_sessions() -> None:
    from loadtests.simulate.llm_fleet import user_key
    from loadtests.simulate.llm_tailgate import request_info

    assert len({user_key(n, 1) for n in range(8)}) == 8
    assert [user_key(n, 4) for n in range(8)] == ["user-0"] * 4 + ["user-1"] * 4
    chat = [{"role": "user", "content": "hi"}]
    assert request_info(chat, 8, blocks=True, user="user-3").session == "user-3"
    assert request_info(chat, 8, blocks=True).session is None


def test_session_affinity_is_a_router_word_that_turns_the_config_field_on() -> None:
    from gateway.balancer.prefix_aware import PrefixAware
    from loadtests.simulate.llm_tailgate import build_replica_policy

    on = build_replica_policy("tailgate prefix_aware session_affinity")
    off = build_replica_policy("tailgate prefix_aware")
    assert isinstance(on, PrefixAware) and isinstance(off, PrefixAware)
    assert on.session_affinity and not off.session_affinity
    spread = build_replica_policy("tailgate prefix_aware session_affinity session_spread=2")
    assert isinstance(spread, PrefixAware) and spread.session_spread == 2
    assert on.session_spread != 2  # the policy's own default otherwise
    with pytest.raises(ValueError, match="session_spread"):
        build_replica_policy("tailgate weighted_score session_spread=2")
    with pytest.raises(ValueError, match="session_affinity"):
        build_replica_policy("tailgate weighted_score session_affinity")


def test_session_affinity_keeps_follow_ups_and_the_bound_spreads_a_shared_key() -> None:
    """Across four replicas the session key keeps more follow-ups on their pod than the prompt
    alone; one key for every session sends all the conversations of a system prompt to one of
    its home's first successors, but the load bound hands the overflow on, so its busiest pod
    serves well under half of the requests."""
    spec = LlmFleetSpec(pods=20, replicas=4, duration_s=3.0)
    plain = simulate(spec, "tailgate prefix_aware")
    per_session = simulate(spec, "tailgate prefix_aware session_affinity")
    one_key = simulate(
        replace(spec, sessions_per_user=10_000), "tailgate prefix_aware session_affinity"
    )
    assert per_session.requests == plain.requests == one_key.requests
    assert per_session.kept_share > plain.kept_share + 0.1
    assert per_session.busiest_x < one_key.busiest_x < spec.pods / 2
