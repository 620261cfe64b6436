"""The CUDA-graph decode path's static shapes, checked on CPU where it runs without capture.

What a GPU adds (the capture and replay themselves) is checked by ``python -m backend.bench``,
which compares graph and eager greedy tokens on the device.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from backend.graphs import DecodeGraphs, batch_buckets  # noqa: E402
from backend.model import Step  # noqa: E402
from backend.runner import ModelRunner, RunnerSpec  # noqa: E402
from backend.weights import ModelSource  # noqa: E402

pytestmark = pytest.mark.torch

SLOTS = 8
PROMPTS = {0: [256, 72, 105, 33], 2: [256, 9, 8], 5: [256, 1, 2, 3, 4, 5, 6]}


def runner(graphs: bool) -> ModelRunner:
    spec = RunnerSpec(
        ModelSource(preset="tiny"), 1, "cpu", "float32", SLOTS, 64, cuda_graphs=graphs
    )
    return ModelRunner.start(spec, None)


@pytest.fixture(scope="module")
def runners() -> tuple[ModelRunner, ModelRunner]:
    return runner(graphs=False), runner(graphs=True)


def prefill(r: ModelRunner, slot: int, ids: list[int]) -> int:
    n = len(ids)
    step = Step(
        torch.tensor([ids]), torch.arange(n)[None], torch.tensor([slot]), n, slot, last_only=True
    )
    return int(r.forward(step)[0, -1].argmax())


def decode_step(
    tokens: dict[int, list[int]], contiguous: bool, prompts: dict[int, list[int]] = PROMPTS
) -> Step:
    """One token per slot in ``tokens`` (outputs so far after ``prompts``), as the engine does."""
    slots = sorted(tokens)
    positions = [len(prompts[s]) + len(tokens[s]) - 1 for s in slots]
    return Step(
        tokens=torch.tensor([[tokens[s][-1]] for s in slots]),
        input_pos=torch.tensor([[p] for p in positions]),
        slots=torch.tensor(slots),
        kv_len=max(positions) + 1,
        slot_start=slots[0] if contiguous else None,
    )


def test_buckets_are_powers_of_two_then_the_slot_count() -> None:
    assert batch_buckets(1) == (1,)
    assert batch_buckets(8) == (1, 2, 4, 8)
    assert batch_buckets(12) == (1, 2, 4, 8, 12)


def test_a_step_runs_in_the_smallest_bucket_holding_its_highest_slot(runners) -> None:
    _, graphs = runners
    step = decode_step({0: [1], 2: [1], 5: [1]}, contiguous=False)
    assert graphs.graph_batch(step) == 8
    assert graphs.graph_batch(Step(step.tokens, step.input_pos, step.slots, 9, slot_limit=3)) == 4
    prefill_step = Step(torch.tensor([[1, 2]]), torch.arange(2)[None], torch.tensor([0]), 2, 0)
    assert graphs.graph_batch(prefill_step) == 0


def test_cache_needs_the_spare_slot() -> None:
    eager = runner(graphs=False)
    with pytest.raises(ValueError, match="one spare"):
        DecodeGraphs(eager.model, SLOTS)


def test_static_decode_matches_eager_on_scattered_slots(runners) -> None:
    """Slots 0, 2, 5 run in bucket 8 (five padding rows) and give eager's logits."""
    outputs = []
    for r in runners:
        tokens = {slot: [prefill(r, slot, ids)] for slot, ids in PROMPTS.items()}
        logits = []
        for _ in range(6):
            out = r.forward(decode_step(tokens, contiguous=False))[:, -1].clone()
            logits.append(out)
            for slot, token in zip(sorted(tokens), out.argmax(-1).tolist(), strict=True):
                tokens[slot].append(token)
        outputs.append((tokens, logits))
    (eager_tokens, eager_logits), (graph_tokens, graph_logits) = outputs
    assert graph_tokens == eager_tokens
    for a, b in zip(eager_logits, graph_logits, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_contiguous_slots_read_the_right_rows(runners) -> None:
    """Slots 1, 2 (a view of the cache from slot 1) in bucket 4, with slot 0 live but idle."""
    prompts = {0: PROMPTS[0], 1: [256, 40, 41], 2: PROMPTS[2]}
    results = []
    for r in runners:
        tokens = {slot: [prefill(r, slot, ids)] for slot, ids in prompts.items()}
        step = decode_step({s: tokens[s] for s in (1, 2)}, contiguous=True, prompts=prompts)
        results.append(r.forward(step)[:, -1].clone())
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-5)


def test_padding_rows_never_write_a_live_slot(runners) -> None:
    """Slot 1 holds a request left out of the step; its cache must come through untouched."""
    _, graphs = runners
    for slot, ids in {0: PROMPTS[0], 1: [256, 7, 7, 7], 2: PROMPTS[2]}.items():
        prefill(graphs, slot, ids)
    caches = [layer.self_attn.cache for layer in graphs.model.layers]
    before = [(c.k[1].clone(), c.v[1].clone()) for c in caches]
    graphs.forward(decode_step({0: [5], 2: [6]}, contiguous=False))  # bucket 4: rows 1, 3 pad
    for cache, (k, v) in zip(caches, before, strict=True):
        assert torch.equal(cache.k[1], k) and torch.equal(cache.v[1], v)


def test_close_destroys_the_graphs_before_leaving_the_group(monkeypatch) -> None:
    """NCCL cannot destroy a communicator while a graph holding its collectives lives."""
    from backend import tp

    events: list[str] = []

    class CapturedGraph:  # what capture() stores, minus the GPU
        def reset(self) -> None:
            events.append("graph destroyed")

    graphs = runner(graphs=True)
    graphs.shard.graphs._graphs[1] = CapturedGraph()
    monkeypatch.setattr(tp, "close_group", lambda: events.append("group left"))
    graphs.close()
    assert events == ["graph destroyed", "group left"]
    assert graphs.shard.graphs._graphs == {}


def test_graphs_are_opt_in_gpu_only_and_allowed_at_any_tp() -> None:
    from backend.cli import parse_args
    from backend.config import ConfigError
    from backend.lifecycle import runner_spec

    assert not parse_args(["--device", "cpu"]).cuda_graphs
    gpu = parse_args(["--device", "cuda", "--tp", "1", "--cuda-graphs"]).validate()
    assert runner_spec(gpu, 0).cuda_graphs
    with pytest.raises(ConfigError, match="cuda_graphs needs --device cuda"):
        replace(gpu, device="cpu", dtype="float32").validate()
    assert runner_spec(replace(gpu, tp=2).validate(), 0).cuda_graphs


def test_only_float32_parity_decides_the_bench_verdict() -> None:
    from backend.bench import _parity_lines

    def check(dtype: str, equal: bool) -> dict[str, object]:
        return {"dtype": dtype, "equal": equal, "slots": [0], "bucket": 1, "tokens": 24,
                "differing": 0 if equal else 3, "max_abs_diff": 0.1, "logit_std": 1.0}  # fmt: skip

    result = {"preset": "1b", "tp": 2, "parity": [check("float32", True), check("bfloat16", False)]}
    lines, ok = _parity_lines(result)
    assert ok and "(bf16 rounding, info)" in lines[1]
    result["parity"] = [check("float32", False)]
    lines, ok = _parity_lines(result)
    assert not ok and "FAIL, picks differ" in lines[0]
