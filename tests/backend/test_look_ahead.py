"""The engine's look-ahead: decode step N+1 launched before step N's tokens are read back.

It must change nothing a client sees: the same greedy tokens as one step at a time, while the
batch shrinks by length and when a row ends on an EOS with the next step already in flight
(that step's token for the row is dropped).
"""

from __future__ import annotations

import inspect
import itertools
import random
import threading

import pytest

torch = pytest.importorskip("torch")

from backend.cli import parse_args  # noqa: E402
from backend.config import BackendConfig  # noqa: E402
from backend.engine import Engine, Request  # noqa: E402
from backend.lifecycle import build_engine  # noqa: E402
from backend.model import Step  # noqa: E402
from backend.runner import ModelRunner, RunnerSpec  # noqa: E402
from backend.tools.scenarios import Borrowed  # noqa: E402
from backend.weights import ModelSource  # noqa: E402

pytestmark = pytest.mark.torch

WAIT_S = 30
PROMPTS = [[256, 72, 105, 33], [256, 9, 8], [256, 1, 2, 3, 4, 5, 6]]
MAX_TOKENS = (12, 7, 20)  # the batch shrinks twice by length


@pytest.fixture(scope="module")
def model() -> ModelRunner:
    spec = RunnerSpec(ModelSource(preset="tiny"), 1, "cpu", "float32", 4, 64, block_size=4)
    return ModelRunner.start(spec, None)


class Logged(Borrowed):
    """The shared runner, logging each launch beside the token events (one timeline)."""

    def __init__(self, runner: ModelRunner, log: list[str], eos: tuple[int, ...]) -> None:
        super().__init__(runner)
        self.config = runner.config.with_tokens(runner.config.bos_token_id, eos)
        self.log = log

    def forward(self, step: Step) -> torch.Tensor:
        self.log.append("launch")
        return super().forward(step)


def generate(model: ModelRunner, look_ahead: bool | None, eos: tuple[int, ...] = ()):  # type: ignore[no-untyped-def]
    """Every prompt's tokens and finish reason, all decoded in one batch; and the timeline.

    ``look_ahead`` None: the engine a server builds with no settings.
    """
    log: list[str] = []
    if look_ahead is None:
        config = parse_args(["--device", "cpu"]).validate()
        engine = build_engine(config, lambda: Logged(model, log, eos))
    else:
        engine = Engine(
            lambda: Logged(model, log, eos), 4, 64, 8, random.Random(0), look_ahead=look_ahead
        )
    done = [threading.Event() for _ in PROMPTS]
    reasons: list[str | None] = [None] * len(PROMPTS)

    def on_event(i: int):  # type: ignore[no-untyped-def]
        def record(event) -> None:  # type: ignore[no-untyped-def]
            log.append("token")
            if event.finish_reason:
                reasons[i] = event.finish_reason
                done[i].set()

        return record

    requests = [
        Request(list(p), n, on_event=on_event(i), ignore_eos=not eos)
        for i, (p, n) in enumerate(zip(PROMPTS, MAX_TOKENS, strict=True))
    ]
    for request in requests:  # all waiting before the engine starts: admitted together
        engine.submit(request)
    engine.start()
    try:
        assert all(event.wait(WAIT_S) for event in done)
    finally:
        engine.stop(WAIT_S)
    return [r.output_ids for r in requests], reasons, log


def launched_ahead(log: list[str]) -> bool:
    """Whether some step was launched before the tokens of the one before it were read."""
    decoding = log[log.index("token") :]
    return any(a == b == "launch" for a, b in itertools.pairwise(decoding))


def test_look_ahead_gives_the_tokens_of_one_step_at_a_time(model: ModelRunner) -> None:
    ahead, ahead_reasons, ahead_log = generate(model, look_ahead=True)
    serial, serial_reasons, serial_log = generate(model, look_ahead=False)
    assert ahead == serial
    assert [len(t) for t in ahead] == list(MAX_TOKENS)
    assert ahead_reasons == serial_reasons == ["length"] * 3
    assert launched_ahead(ahead_log) and not launched_ahead(serial_log)


def test_the_server_decodes_with_look_ahead_by_default(model: ModelRunner) -> None:
    default, reasons, log = generate(model, look_ahead=None)
    serial, _, _ = generate(model, look_ahead=False)
    assert launched_ahead(log) and default == serial and reasons == ["length"] * 3
    engine_default = inspect.signature(Engine).parameters["look_ahead"].default
    assert BackendConfig().look_ahead is engine_default is True  # the two defaults agree
    assert parse_args(["--device", "cpu", "--no-look-ahead"]).look_ahead is False


def test_a_row_ending_on_eos_with_the_next_step_in_flight_drops_that_token(model) -> None:
    baseline, _, _ = generate(model, look_ahead=False)
    stop = baseline[1][2]  # the second prompt's third token ends it
    ahead, ahead_reasons, _ = generate(model, look_ahead=True, eos=(stop,))
    serial, serial_reasons, _ = generate(model, look_ahead=False, eos=(stop,))
    assert ahead == serial and ahead_reasons == serial_reasons
    assert ahead[1] == baseline[1][: baseline[1].index(stop) + 1]
    assert ahead_reasons[1] == "stop"
    for tokens, full in zip(ahead, baseline, strict=True):  # the others run on unharmed
        assert tokens == full[: len(tokens)]


def test_the_bench_times_both_modes_on_the_same_tokens() -> None:
    """What ``--scenarios`` runs: each mode twice, alternating, every run the first's tokens."""
    from backend.tools.scenarios import engine_decode_compared

    spec = RunnerSpec(ModelSource(preset="tiny"), 1, "cpu", "float32", 2, 256)
    runner = ModelRunner.start(spec, None)
    compared = engine_decode_compared(runner, 256, batch=2, rounds=2)
    assert len(compared["off_itl_ms"]) == len(compared["on_itl_ms"]) == 2
    assert compared["tokens_equal"] and compared["ratio"] > 0


def test_idle_gaps_are_counted_between_the_union_of_device_work() -> None:
    from backend.tools.engine_trace import gap_summary, idle_gaps_us

    # Two overlapping kernels, a 100 us gap, a kernel inside the one before, a 30 us gap.
    busy = [(0.0, 10.0), (5.0, 20.0), (120.0, 200.0), (150.0, 160.0), (230.0, 240.0)]
    assert idle_gaps_us(busy, min_gap_us=0.0) == [100.0, 30.0]
    assert idle_gaps_us(list(reversed(busy)), min_gap_us=50.0) == [100.0]
    summary = gap_summary([100.0, 30.0], steps=2)
    assert summary == {
        "gaps": 2,
        "gaps_per_step": 1.0,
        "median_gap_us": 65.0,
        "idle_us_per_step": 65.0,
    }
