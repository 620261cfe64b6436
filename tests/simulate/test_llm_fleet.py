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
