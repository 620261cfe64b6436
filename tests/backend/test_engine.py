"""Engine behaviour shown by its own state: batching, chunked prefill, prefix reuse, cancellation,
queue bounds, sampling."""

from __future__ import annotations

import itertools
import queue
import random
import threading
import time
from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch")

from backend.engine import Engine, QueueFull, Request, StepRecord, TokenEvent  # noqa: E402
from backend.model import Step  # noqa: E402
from backend.runner import ModelRunner, RunnerSpec  # noqa: E402
from backend.sampling import SamplingParams  # noqa: E402
from backend.weights import ModelSource  # noqa: E402

pytestmark = pytest.mark.torch

WAIT_S = 10


class GatedRunner:
    """The tiny model, but each decode step waits for a permit the test hands out."""

    def __init__(self) -> None:
        spec = RunnerSpec(ModelSource(preset="tiny"), 1, "cpu", "float32", 4, 64, block_size=4)
        self.inner = ModelRunner.start(spec, None)
        self.config, self.device = self.inner.config, self.inner.device
        self.num_blocks, self.block_size = self.inner.num_blocks, self.inner.block_size
        self.gated = False
        self.permits = threading.Semaphore(0)
        self.blocked = threading.Event()

    def forward(self, step: Step) -> torch.Tensor:
        if self.gated and step.tokens.shape[1] == 1:
            self.blocked.set()
            assert self.permits.acquire(timeout=WAIT_S), "test never released the decode step"
            self.blocked.clear()
        return self.inner.forward(step)

    def heartbeat(self) -> None:
        pass

    def close(self) -> None:
        self.permits.release(1000)


def wait_until(condition, timeout_s: float = WAIT_S) -> None:
    """Poll a cheap in-process condition until it holds (bounded)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


@pytest.fixture
def gated() -> Iterator[tuple[Engine, GatedRunner, list[StepRecord]]]:
    runner = GatedRunner()
    records: list[StepRecord] = []
    engine = Engine(lambda: runner, 4, 64, 2, random.Random(0), observer=records.append)
    engine.start()
    assert engine.ready.wait(WAIT_S)
    runner.gated = True
    records.clear()
    yield engine, runner, records
    engine.stop(WAIT_S)


def collecting(max_tokens: int, **kw) -> tuple[Request, queue.Queue[TokenEvent]]:
    events: queue.Queue[TokenEvent] = queue.Queue()
    request = Request([256, 72, 105], max_tokens, on_event=events.put, ignore_eos=True, **kw)
    return request, events


def drain(events: queue.Queue[TokenEvent]) -> list[TokenEvent]:
    out = [events.get(timeout=WAIT_S)]
    while out[-1].finish_reason is None:
        out.append(events.get(timeout=WAIT_S))
    return out


def test_second_request_joins_running_batch(gated) -> None:
    engine, runner, records = gated
    first, first_events = collecting(6)
    engine.submit(first)
    first_events.get(timeout=WAIT_S)  # prefilled; its first decode step now waits at the gate
    assert runner.blocked.wait(WAIT_S)
    second, second_events = collecting(3)
    engine.submit(second)
    runner.permits.release(100)
    assert len(drain(second_events)) == 3
    assert len(drain(first_events)) == 5

    kinds = [(r.kind, r.request_ids) for r in records]
    joined = kinds.index(("prefill", (second.id,)))
    assert ("decode", (first.id,)) in kinds[:joined]  # the first was already decoding alone...
    assert ("decode", (first.id, second.id)) in kinds[joined:]  # ...when the second joined it
    assert engine.running_count == 0


def test_cancel_frees_running_slot(gated) -> None:
    engine, runner, _ = gated
    request, events = collecting(50)
    engine.submit(request)
    events.get(timeout=WAIT_S)
    assert runner.blocked.wait(WAIT_S)
    assert engine.running_count == 1
    engine.cancel(request)
    runner.permits.release(100)
    wait_until(lambda: engine.running_count == 0)
    assert request.finished and len(request.output_ids) < 50
    blocks = engine.blocks
    assert blocks is not None and blocks.available_blocks == blocks.usable_blocks


def test_cancel_removes_waiting_request() -> None:
    engine = Engine(lambda: None, 1, 64, 4, random.Random(0))  # never started
    request, _ = collecting(4)
    engine.submit(request)
    assert engine.waiting_count == 1
    engine.cancel(request)
    assert engine.waiting_count == 0 and request.cancelled


def test_full_queue_refuses() -> None:
    engine = Engine(lambda: None, 1, 64, 2, random.Random(0))  # never started: nothing drains
    engine.submit(collecting(4)[0])
    engine.submit(collecting(4)[0])
    assert engine.queue_depth == 2
    with pytest.raises(QueueFull):
        engine.submit(collecting(4)[0])


def test_generation_stops_at_max_model_len() -> None:
    spec = RunnerSpec(ModelSource(preset="tiny"), 1, "cpu", "float32", 2, 8, block_size=4)
    engine = Engine(lambda: ModelRunner.start(spec, None), 2, 8, 4, random.Random(0))
    request, events = collecting(100)
    engine.submit(request)
    engine.start()
    try:
        out = drain(events)
    finally:
        engine.stop(WAIT_S)
    assert out[-1].finish_reason == "length"
    assert len(request.prompt_ids) + len(out) == 8


def test_seeded_sampling_is_reproducible_across_batches(gated) -> None:
    engine, runner, _ = gated
    runner.gated = False
    sampling = SamplingParams(temperature=1.0, top_p=0.9, seed=1234)
    alone, alone_events = collecting(8, sampling=sampling)
    engine.submit(alone)
    drain(alone_events)
    together, together_events = collecting(8, sampling=sampling)
    neighbour, neighbour_events = collecting(8, sampling=SamplingParams(temperature=1.0, seed=9))
    engine.submit(together)
    engine.submit(neighbour)
    drain(together_events)
    drain(neighbour_events)
    assert together.output_ids == alone.output_ids
    assert neighbour.output_ids != alone.output_ids


def test_drain_refuses_new_work_and_lets_accepted_finish(gated) -> None:
    engine, runner, _ = gated
    request, events = collecting(4)
    engine.submit(request)
    events.get(timeout=WAIT_S)
    assert runner.blocked.wait(WAIT_S)
    drained: list[bool] = []
    drainer = threading.Thread(target=lambda: drained.append(engine.drain(WAIT_S)))
    drainer.start()
    wait_until(lambda: engine._draining)
    with pytest.raises(QueueFull):
        engine.submit(collecting(2)[0])
    runner.permits.release(100)
    drainer.join(WAIT_S)
    assert drained == [True]
    assert drain(events)[-1].finish_reason == "length" and len(request.output_ids) == 4


PROMPT = [256, *range(40, 70)]  # 31 tokens: seven full blocks of 4, and a partial one


def run_engine(requests: list[Request], **engine_kw) -> list[StepRecord]:
    """Run ``requests`` (submitted in order, each after the previous finished) on a fresh
    tiny-model engine; the model passes it made."""
    spec_kw = {"block_size": 4, **engine_kw.pop("spec", {})}
    spec = RunnerSpec(ModelSource(preset="tiny"), 1, "cpu", "float32", 4, 64, **spec_kw)
    records: list[StepRecord] = []
    engine = Engine(
        lambda: ModelRunner.start(spec, None),
        4,
        64,
        8,
        random.Random(0),
        observer=records.append,
        **engine_kw,
    )
    engine.start()
    try:
        assert engine.ready.wait(WAIT_S)
        records.clear()
        for request in requests:
            done = threading.Event()
            request.on_event = lambda e, done=done: e.finish_reason and done.set()
            engine.submit(request)
            assert done.wait(WAIT_S)
    finally:
        engine.stop(WAIT_S)
    return records


def greedy_request(prompt: list[int], max_tokens: int = 6) -> Request:
    return Request(list(prompt), max_tokens, ignore_eos=True)


def test_chunked_prefill_gives_the_tokens_of_a_whole_prefill() -> None:
    whole, chunked = greedy_request(PROMPT), greedy_request(PROMPT)
    whole_records = run_engine([whole], max_num_batched_tokens=512)
    chunked_records = run_engine([chunked], max_num_batched_tokens=8)
    assert [r.tokens for r in whole_records if r.kind == "prefill"] == [31]
    assert [r.tokens for r in chunked_records if r.kind == "prefill"] == [8, 8, 8, 7]
    assert chunked.output_ids == whole.output_ids


def test_long_prompt_is_chunked_between_decode_steps_of_a_running_request(gated) -> None:
    engine, runner, records = gated
    engine.max_num_batched_tokens = 5  # one decode row + 4 prompt tokens per round
    running, running_events = collecting(30)  # outlives the long prompt's eight chunks
    engine.submit(running)
    running_events.get(timeout=WAIT_S)
    assert runner.blocked.wait(WAIT_S)
    long, long_events = collecting(2)
    long.prompt_ids = list(PROMPT)
    engine.submit(long)
    runner.permits.release(100)
    drain(long_events)
    drain(running_events)
    chunk_at = [
        i for i, r in enumerate(records) if r.kind == "prefill" and r.request_ids == (long.id,)
    ]
    assert [records[i].tokens for i in chunk_at] == [4] * 7 + [3]
    for before, after in itertools.pairwise(chunk_at):  # a decode between chunks
        between = records[before + 1 : after]
        assert [(r.kind, r.request_ids) for r in between] == [("decode", (running.id,))]


def test_a_cached_prefix_is_reused_and_gives_the_same_tokens() -> None:
    fresh = greedy_request([*PROMPT[:20], 1, 2, 3, 4, 5])
    first, again = greedy_request(PROMPT), greedy_request([*PROMPT[:20], 1, 2, 3, 4, 5])
    run_engine([fresh])
    records = run_engine([first, again])
    assert again.chain is not None and again.chain.cached_tokens == 20  # five shared blocks
    assert [r.tokens for r in records if r.kind == "prefill"] == [31, 5]
    assert again.output_ids == fresh.output_ids


def test_cached_blocks_are_evicted_under_pressure_and_outputs_stay_right() -> None:
    """A cache of 17 blocks (16 usable): each request reserves 10; later ones evict earlier
    prefixes, least recently released first, yet generate what a fresh engine does."""
    prompts = [[256, i, *range(80, 110)] for i in range(4)]
    expected = []
    for prompt in prompts:
        request = greedy_request(prompt)
        run_engine([request])
        expected.append(request.output_ids)
    requests = [greedy_request(p) for p in prompts]
    run_engine(requests, spec={"num_blocks": 17})
    assert [r.output_ids for r in requests] == expected
    assert all(r.chain is not None and r.chain.cached_tokens == 0 for r in requests)
