"""The streaming client against a real emulated pod: turns quote answers, failures rank slowest."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from loadtests.llm.client import Outcome, run_sessions
from loadtests.llm.costs import EngineCosts
from loadtests.llm.engine import Engine
from loadtests.llm.pod import ENGINE, build_app
from loadtests.llm.summary import follow_ups_kept
from loadtests.llm.workloads import Session, Turn, system_prompt

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def pod() -> AsyncIterator[tuple[str, Engine]]:
    costs = EngineCosts(step_s=0.001, decode_per_seq_s=0.0, prefill_per_token_s=0.0)
    app = build_app(costs, name="pod-a")
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", app[ENGINE]
    await runner.cleanup()


SESSION = Session(0.0, system_prompt(0, 56), (Turn("hello there", 5, 0.0), Turn("and?", 3, 0.01)))


async def test_a_session_quotes_its_answers_and_its_second_turn_hits_the_cache(
    pod: tuple[str, Engine],
) -> None:
    url, engine = pod
    outcomes, wall_s = await run_sessions(url, [SESSION], timeout_s=10.0)
    assert [o.turn for o in outcomes] == [0, 1] and all(o.ok for o in outcomes)
    assert [o.output_tokens for o in outcomes] == [5, 3]
    assert all(0 < o.ttft_s <= o.e2e_s <= wall_s for o in outcomes)
    assert not math.isnan(outcomes[0].tpot_s)
    # turn 1: 61 prompt tokens and a 5-token answer, so its 4th full block ends inside the
    # answer; turn 2 hits all 4 only if the client quoted the answer token for token
    assert engine.counters.prefix_hits_tokens == 64


async def test_a_failed_request_has_no_first_token(pod: tuple[str, Engine]) -> None:
    url, engine = pod
    engine.faults.error_rate = 1.0
    outcomes, _ = await run_sessions(url, [SESSION], timeout_s=10.0)
    assert [o.status for o in outcomes] == [500, 500]
    assert all(math.isinf(o.ttft_s) and math.isnan(o.tpot_s) for o in outcomes)


async def test_each_answer_names_its_pod_and_a_kept_follow_up_counts(
    pod: tuple[str, Engine],
) -> None:
    url, _ = pod
    outcomes, _ = await run_sessions(url, [SESSION], timeout_s=10.0)
    assert [o.served_by for o in outcomes] == ["pod-a", "pod-a"]
    assert follow_ups_kept(outcomes) == 1.0


def test_follow_ups_kept_counts_answered_pairs_of_consecutive_turns() -> None:
    def served(session: int, turn: int, pod: str, status: int = 200) -> Outcome:
        return Outcome(session, turn, 0.0, status=status, served_by=pod)

    outcomes = [
        served(0, 0, "a"),
        served(0, 1, "a"),  # kept
        served(0, 2, "b"),  # moved
        served(1, 0, "a", status=500),
        served(1, 1, "b"),  # its previous turn failed: not a pair
    ]
    assert follow_ups_kept(outcomes) == 0.5
    assert math.isnan(follow_ups_kept(outcomes[3:]))
